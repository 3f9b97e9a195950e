"""What each backend name means per op, and how ``auto`` picks the grouped-GEMM kernels.

The names and the process-wide choice live in :mod:`xt.kernels.registry` (``set_backend``,
``get_backend``, ``dispatch``, re-exported here, their historical import path); each op module
registers its implementations there. This module holds the grouped GEMM's ``auto`` choice
(:func:`choose_grouped_gemm`), which :mod:`xt.kernels.moe.grouped_gemm` and
:mod:`xt.kernels.moe.swiglu_experts` call; it imports no op module.

Ops: ``"grouped_gemm"``, ``"permute"``, ``"unpermute"``, ``"loss"`` (the fused linear
cross-entropy), ``"log_probs"`` (the fused per-token log-probabilities/entropy). Backend names: ``"auto"``, ``"triton"``, ``"torch"``, ``"reference"``, ``"npu"``.

* ``reference``: plain PyTorch, any device and dtype (float64 too); the tests' ground truth.
* ``torch``: built-in fused ops (``torch._grouped_mm``; chunked torch ops for the loss). For
  permute/unpermute the torch ops *are* the reference, so ``torch`` means ``reference`` there.
* ``triton``: our Triton kernels (CUDA; CPU only under ``TRITON_INTERPRET=1``).
* ``npu``: ``torch_npu`` (imported only when chosen; untested on hardware). For permute/unpermute
  and the loss it runs the torch implementation on the NPU device.
* ``auto``: per call, from the tensors' device. For the grouped GEMM on CUDA it times every
  usable kernel set (median of 5 interleaved timings) once per (GPU, dtype, layout, K, N, E,
  rows-per-expert bucket: ``xt.kernels.moe.tuning.rows_bucket``) on the first call's real inputs, separately for the m-grouped products (forward, dX) and the k-grouped weight
  gradient, and caches the fastest pair (e.g. ``"triton/torch"``). While ``torch.compile`` traces
  or a CUDA graph is captured it cannot time; then it uses a cached choice or the static default
  below (from our H200 measurements, ``benchmarks/results/kernels-*.json``).
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

from xt.kernels._triton_support import triton_usable_on
from xt.kernels.moe.tuning import SMALL, rows_bucket
from xt.kernels.registry import BACKENDS, OPS, dispatch, get_backend, set_backend

__all__ = ["OPS", "BACKENDS", "set_backend", "get_backend", "dispatch", "choose_grouped_gemm",
           "auto_choices"]

_auto_cache: dict[tuple, str] = {}
# Default kernel sets when auto cannot time (under torch.compile tracing / CUDA-graph capture).
# On the H200 the Triton kernels won or tied at most benchmark shapes (README: measured numbers).
STATIC_CUDA_DEFAULT = "triton/triton"


def auto_choices() -> dict[tuple, str]:
    """A copy of the grouped-GEMM choices ``auto`` has measured so far (key -> ``"m/k"`` pair)."""
    return dict(_auto_cache)


@functools.cache
def _device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev)


def _candidates(x: torch.Tensor, w: torch.Tensor, trans_b: bool) -> list[str]:
    """Fast kernel sets usable for these inputs; none when K or N is not 16-byte aligned
    (then ``auto`` falls back to the per-expert loop instead of raising); Triton only for
    fp16 / bf16 / fp32 inputs."""
    from xt.kernels.moe import gg_torch
    out = []
    if not gg_torch.aligned(x, w, trans_b):
        return out
    # the Triton kernels accumulate in fp32: float64 inputs (checks against a float64 reference) take the loop
    if x.device.type == "cuda" and x.dtype in (torch.float16, torch.bfloat16, torch.float32) and triton_usable_on(x.device):
        out.append("triton")
    if gg_torch.available(x):
        out.append("torch")
    return out


def _time_ms(fn: Callable[[], object], reps: int = 5, warm: bool = True) -> float:
    if warm:
        fn()  # warm-up (also triggers Triton autotuning)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def _interleaved_medians(fns: dict[str, Callable[[], object]], rounds: int = 5) -> dict[str, float]:
    """Median milliseconds of each candidate over ``rounds`` interleaved timings (GPU clocks drift
    by a few per cent within seconds; interleaving exposes every candidate to the same drift)."""
    for fn in fns.values():
        fn()  # warm-up (also triggers Triton autotuning)
    times: dict[str, list[float]] = {c: [] for c in fns}
    for _ in range(rounds):
        for c, fn in fns.items():
            times[c].append(_time_ms(fn, warm=False))
    return {c: sorted(t)[len(t) // 2] for c, t in times.items()}


def choose_grouped_gemm(x: torch.Tensor, w: torch.Tensor, tokens_per_expert: torch.Tensor,
                        trans_b: bool) -> str:
    """The kernel-set pair ``"m/k"`` that ``auto`` uses for these inputs (see module docstring)."""
    dev = x.device
    if dev.type == "npu":
        return "npu"
    cands = _candidates(x, w, trans_b)
    if dev.type == "cuda" and torch.compiler.is_compiling():
        # No timing (or device queries) while tracing: the static choice from our measurements.
        if not cands:
            return "loop"
        if triton_usable_on(dev):
            return STATIC_CUDA_DEFAULT
        return "torch/torch" if x.dtype == torch.bfloat16 else "loop"
    if dev.type != "cuda":
        return "torch" if "torch" in cands else "loop"
    if not cands:
        return "loop"
    E, N = w.shape[0], (w.shape[1] if trans_b else w.shape[2])
    bucket = rows_bucket(x.shape[0], E)  # one choice per model shape, not per row count
    if bucket == SMALL:  # small calls are never timed (xt.kernels.moe.tuning)
        return STATIC_CUDA_DEFAULT if "triton" in cands else f"{cands[0]}/{cands[0]}"
    key = (_device_name(dev), x.dtype, trans_b, x.shape[1], N, E, bucket)
    if key in _auto_cache:
        return _auto_cache[key]
    if len(cands) == 1:
        _auto_cache[key] = f"{cands[0]}/{cands[0]}"
        return _auto_cache[key]
    if torch.cuda.is_current_stream_capturing() or x.shape[0] == 0:
        return STATIC_CUDA_DEFAULT if "triton" in cands else f"{cands[0]}/{cands[0]}"
    from xt.kernels.moe.gg_op import kernel_set
    with torch.no_grad():  # time the orientations the forward and backward really use
        y = torch.randn(x.shape[0], N, dtype=x.dtype, device=dev)
        m_fns = {c: (lambda c=c: (kernel_set(c).mgrouped(x, w, tokens_per_expert, trans_b),
                                  kernel_set(c).mgrouped(y, w, tokens_per_expert, not trans_b))) for c in cands}
        k_fns = {c: (lambda c=c: (kernel_set(c).kgrouped(y, x, tokens_per_expert) if trans_b
                                  else kernel_set(c).kgrouped(x, y, tokens_per_expert))) for c in cands}
        t_m, t_k = _interleaved_medians(m_fns), _interleaved_medians(k_fns)
    choice = f"{min(t_m, key=t_m.get)}/{min(t_k, key=t_k.get)}"
    _auto_cache[key] = choice
    return choice
