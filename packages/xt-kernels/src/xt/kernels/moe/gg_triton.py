"""Triton grouped GEMM kernels: m-grouped (forward, dX) and k-grouped (dW), persistent.

Shape legend: R routed rows (sorted by expert), E experts, K reduction size, N output columns,
P x Q the per-expert weight-gradient block.

* ``mgrouped(x[R, K], w, counts[E], trans_b) -> y[R, N]`` with ``y[rows of e] = x[rows of e] @ B_e``,
  where ``B_e = w[e]`` (``w[E, K, N]``) or ``B_e = w[e]ᵀ`` (``w[E, N, K]``, ``trans_b=True``).
* ``kgrouped(a[R, P], b[R, Q], counts[E]) -> c[E, P, Q]`` with ``c[e] = a[rows of e]ᵀ @ b[rows of e]``;
  experts without rows get exactly zero (every output tile is written, empty sums included).
  ``kgrouped(..., out=main_grad)`` adds the products into a float32 ``[E, P, Q]`` in the epilogue.
* ``mgrouped_swiglu`` / ``mgrouped_dswiglu``: the m-grouped product with the SwiGLU forward or
  backward in its epilogue (used by :mod:`xt.kernels.moe.swiglu_experts`).

The device code lives in :mod:`xt.kernels.moe.gg_triton_kernels`; this module holds the
autotuning candidates and the host-side entry points.

Scheduling (our design): a persistent grid of at most one program per SM walks the tiles
``(expert, m-tile, n-tile)`` with stride ``num_programs``. Tile counts per expert are computed on
the device inside every program from ``counts`` (a cumulative sum over a vector of E entries), so
the host never reads ``counts`` (no synchronisation) and the autotuner may pick any block size.
Operands are read through device-side tensor descriptors (TMA on Hopper) when strides allow it,
otherwise through masked pointer loads. Accumulation is float32; float32 inputs use IEEE dots.

SwiGLU epilogues with 16-bit inputs on the GPU take the sigmoid as ``0.5 · tanh(x / 2) + 0.5``
with PTX ``tanh.approx.f32``: its largest absolute error over [-30, 30] is 3.9e-6 against float64
(``tl.sigmoid``: 1.2e-7), far below half a bf16 ulp of the outputs (``check_gpu.py``,
``kernels-check-fastsig-2026-11-29.json``). It made the dh + SwiGLU-backward kernel 16% faster
and the gate/up + SwiGLU one 4% on the Qwen3-30B-A3B shape (H200,
``kernels-sched-fastsig-2026-11-29.json``). float32 inputs and the CPU interpreter keep
``tl.sigmoid``.
"""
from __future__ import annotations

import warnings

import torch
import triton

from xt.kernels._triton_support import ensure_allocator, interpreter_active, num_sms
from xt.kernels.moe.gg_triton_kernels import _kgrouped_kernel, _mgrouped_kernel
from xt.kernels.moe.tuning import SMALL, rows_bucket

__all__ = ["mgrouped", "kgrouped", "mgrouped_swiglu", "mgrouped_dswiglu"]


def _cfg(bm, bn, bk, g, stages, warps, tma=True, epi=False, ws=False):
    return triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": g, "USE_TMA": tma, "EPI_TMA": epi, "WS": ws},
                         num_stages=stages, num_warps=warps)


# Hopper-oriented candidates (128-row wgmma tiles, 3-4 stage pipelines). Every candidate costs a
# Triton compilation and a timing in each run's warm-up, so the lists keep the tiles that won on
# the H200 for the Qwen3-MoE shapes (benchmarks/results/kernels-sched-*-2026-11-29.json: 128x128x64
# and 128x256x64 for the m-grouped products, 128x256x32 / 128x256x64 for dW, the 256-wide bulk-store
# epilogue for dh + dSwiGLU) and their nearest neighbours; the bulk-store (EPI) and warp-specialised
# (WS) variants of the plain products never won and were dropped (warm-up 87 s -> see the JSON of
# the run after). ``benchmarks/kernels/check_gpu.py`` drops variants the Triton build rejects.
_M_CONFIGS = [_cfg(128, 256, 64, 8, 3, 8), _cfg(128, 128, 64, 8, 4, 8), _cfg(128, 128, 64, 8, 4, 4),
              _cfg(128, 256, 64, 8, 4, 8)]
_K_CONFIGS = [_cfg(128, 256, 64, 8, 3, 8), _cfg(128, 128, 64, 8, 4, 8), _cfg(128, 256, 32, 8, 4, 8)]
_SMALL = [_cfg(64, 64, 32, 4, 3, 4)]  # 4-byte inputs: the 16-bit tiles would not fit in shared memory
# SwiGLU epilogues (ACT 1/2), through pointers or tensor descriptors (EPI); ACT 1 keeps two
# accumulators, so its BN is the width of each (gate, up) half.
_ACT_CONFIGS = [_cfg(128, 128, 64, 8, 3, 8), _cfg(128, 128, 64, 8, 4, 8), _cfg(128, 64, 64, 8, 4, 4),
                _cfg(128, 256, 64, 8, 3, 8, epi=True)]


# Calls below the tuning threshold (xt.kernels.moe.tuning.SMALL) launch a fixed config instead of
# autotuning: 128x128x64 tiles are in every 16-bit candidate list (ACT modes included).
_STATIC_16 = _cfg(128, 128, 64, 8, 4, 8)
_STATIC = {"m": {2: _STATIC_16, 4: _SMALL[0]}, "k": {2: _STATIC_16, 4: _SMALL[0]}}


def _static(kind: str, t: torch.Tensor) -> dict:
    """Launch kwargs (meta-parameters, warps, stages) of the fixed config for `kind` "m"/"k"."""
    c = _STATIC[kind][2 if t.element_size() <= 2 else 4]
    return dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)


def _prune(configs, named_args, **kwargs):
    """Keep the 16-bit candidates for bf16/fp16 inputs and the small tile for float32; the SwiGLU
    epilogue modes get their own candidates (ACT 1 without 256-wide halves)."""
    first = named_args.get("x_ptr", named_args.get("a_ptr"))
    small = first is not None and first.element_size() > 2
    act = kwargs.get("ACT", named_args.get("ACT", 0))
    # by identity: equal-valued configs appear in several lists
    small_ids, act_ids = {id(c) for c in _SMALL}, {id(c) for c in _ACT_CONFIGS}
    if small:
        return [c for c in configs if id(c) in small_ids] or configs
    if act:
        return [c for c in configs if id(c) in act_ids
                and not (act == 1 and c.kwargs["BN"] > 128)]
    return [c for c in configs if id(c) not in small_ids and id(c) not in act_ids] or configs


def _autotune_bench(fn, quantiles):
    """The autotuner's timer: ``triton.testing.do_bench`` with 2.5x its default repeat time, for
    fewer wrong picks among configs a few percent apart. With the default, the Qwen3-30B-A3B
    dW_down kept a config (128x256x64, 3 stages) that measured 0.72 ms in one probe and 0.81 ms in
    another (``kernels-sched-{occ-flatten,kgrouped}-2026-11-29.json``)."""
    return triton.testing.do_bench(fn, warmup=50, rep=250, quantiles=quantiles)


_mgrouped_tuned = triton.autotune(_M_CONFIGS + _ACT_CONFIGS + _SMALL, key=["N", "K", "B_TRANS", "M_BUCKET", "E", "ACT"],
                                  prune_configs_by={"early_config_prune": _prune},
                                  do_bench=_autotune_bench)(_mgrouped_kernel)
_kgrouped_tuned = triton.autotune(_K_CONFIGS + _SMALL, key=["P", "Q", "M_BUCKET", "E"],
                                  prune_configs_by={"early_config_prune": _prune},
                                  do_bench=_autotune_bench)(_kgrouped_kernel)
# The accumulating variant: tuned on its own (a read-modify-write epilogue favours other tiles), once
# per weight shape (its time is the fp32 [E, P, Q] traffic, nearly independent of the row count: no
# re-tuning when a micro-batch's rows change bucket), and the autotuner puts ``c`` back after every
# timed launch (each one adds into it).
_kgrouped_accum_tuned = triton.autotune(_K_CONFIGS + _SMALL, key=["P", "Q", "E"],
                                        prune_configs_by={"early_config_prune": _prune},
                                        restore_value=["c_ptr"], do_bench=_autotune_bench)(_kgrouped_kernel)
# Small fixed blocks for the CPU interpreter (tests): autotuning there would only cost time.
_INTERP = {"BM": 16, "BN": 16, "BK": 16, "GROUP_M": 2, "num_warps": 4}
# Whether this module's kernels were created by Triton's interpreter (decided when it is imported).
_INTERPRETED = interpreter_active()
# Tests flip this to run the tensor-descriptor (TMA) code path in the interpreter too.
INTERPRETER_USE_TMA = False


def _tma_ok(*tensors: torch.Tensor) -> bool:
    """Tensor descriptors need 16-byte aligned base pointers and row strides."""
    return all(t.data_ptr() % 16 == 0 and (t.stride(-2) * t.element_size()) % 16 == 0 for t in tensors)


def _common(x: torch.Tensor, counts: torch.Tensor):
    E = counts.numel()
    dev_index = x.device.index if x.device.type == "cuda" else None
    bucket = rows_bucket(x.shape[0], E)  # tuning key: see xt.kernels.moe.tuning
    prec = "ieee" if x.dtype == torch.float32 else "tf32"
    return E, triton.next_power_of_2(max(E, 2)), num_sms(dev_index), bucket, prec


def _launch_m(x, w, y, aux, counts, trans_b: bool, N: int, act: int) -> None:
    """Run the m-grouped kernel over ``x[R, K]`` into ``y`` (see ``_mgrouped_kernel`` for ``act``)."""
    R, K = x.shape
    counts = counts.to(device=x.device, dtype=torch.int32)
    E, e_pow2, sms, bucket, prec = _common(x, counts)
    ensure_allocator(x.device)
    args = (x, w, y, aux, counts, R, N, K, E, bucket)
    if _INTERPRETED:
        tma = INTERPRETER_USE_TMA and _tma_ok(x, w)
        kw = dict(_INTERP, USE_TMA=tma, EPI_TMA=tma)
        grid = (min(sms, (triton.cdiv(R, kw["BM"]) + E) * triton.cdiv(N, kw["BN"])),)
        _mgrouped_kernel[grid](*args, B_TRANS=trans_b, E_POW2=e_pow2, DOT_PREC=prec, ACT=act, **kw)
        return
    if not _tma_ok(x, w):
        raise ValueError("grouped_gemm[triton]: x and w need 16-byte aligned rows (K, N multiples of "
                         f"{16 // x.element_size()} for {x.dtype}); got x {tuple(x.shape)}, w {tuple(w.shape)}")

    def grid(meta):
        return (max(1, min(sms, (triton.cdiv(R, meta["BM"]) + E) * triton.cdiv(N, meta["BN"]))),)
    fast_sig = act != 0 and x.element_size() == 2
    with torch.cuda.device(x.device):
        if bucket == SMALL:
            kw = _static("m", x)
            _mgrouped_kernel[grid(kw)](*args, B_TRANS=trans_b, E_POW2=e_pow2, DOT_PREC=prec, ACT=act,
                                       FAST_SIG=fast_sig, **kw)
        else:
            _mgrouped_tuned[grid](*args, B_TRANS=trans_b, E_POW2=e_pow2, DOT_PREC=prec, ACT=act, FAST_SIG=fast_sig)


def mgrouped(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor, trans_b: bool) -> torch.Tensor:
    """m-grouped GEMM (see module docstring). ``x`` and ``w`` are made contiguous; returns
    ``[R, N]`` in ``x.dtype``. Counts stay on the device (read only by the kernel)."""
    return _product_m(x, w, counts, trans_b, 0, None)


def _product_m(x, w, counts, trans_b: bool, act: int, gate_up) -> torch.Tensor:
    """Host side of the single-output modes: ``[R, N]`` (ACT 0) or ``[R, 2N]`` (ACT 2, with
    ``gate_up[R, 2N]``), zero-sized and K = 0 cases handled without a launch."""
    x, w = x.contiguous(), w.contiguous()
    R, K = x.shape
    N = w.shape[1] if trans_b else w.shape[2]
    y = torch.empty(R, 2 * N if act == 2 else N, dtype=x.dtype, device=x.device)
    if R == 0 or N == 0:
        return y
    if K == 0:
        return y.zero_()
    _launch_m(x, w, y, y if gate_up is None else gate_up.contiguous(), counts, trans_b, N, act)
    return y


def mgrouped_swiglu(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate/up projection with the SwiGLU activation fused into the epilogue.

    Args:
        x: ``[R, K]`` rows sorted by expert.
        w: ``[E, 2F, K]`` (``nn.Linear`` layout): rows ``[:F]`` gate, ``[F:]`` up.
        counts: ``[E]`` rows per expert (on the device).

    Returns:
        ``(gate_up[R, 2F], h[R, F])`` in ``x.dtype``: the two projections (saved for the backward)
        and ``h = silu(gate) * up`` computed from the float32 accumulators.
    """
    x, w = x.contiguous(), w.contiguous()
    R, K = x.shape
    F = w.shape[1] // 2
    gate_up = torch.empty(R, 2 * F, dtype=x.dtype, device=x.device)
    h = torch.empty(R, F, dtype=x.dtype, device=x.device)
    if R == 0 or F == 0:
        return gate_up, h
    if K == 0:
        return gate_up.zero_(), h.zero_()
    _launch_m(x, w, h, gate_up, counts, True, F, 1)
    return gate_up, h


def mgrouped_dswiglu(dy: torch.Tensor, w: torch.Tensor, gate_up: torch.Tensor, counts: torch.Tensor,
                     trans_b: bool) -> torch.Tensor:
    """Down projection's input gradient with the SwiGLU backward fused into the epilogue.

    ``dh = dy @ B_e`` (``B_e = w[e]`` for ``w[E, K, F]``, or ``w[e]ᵀ`` for ``w[E, F, K]`` with
    ``trans_b``), then ``d_gate = dh · up · silu'(gate)``, ``d_up = dh · silu(gate)``.

    Args:
        dy: ``[R, K]`` gradient of the expert output, rows sorted by expert.
        w: the down projection's weight in either layout.
        gate_up: ``[R, 2F]`` saved ``[gate | up]`` of the forward.
        counts: ``[E]`` rows per expert (on the device).
        trans_b: layout of ``w``.

    Returns:
        ``[R, 2F]`` = ``[d_gate | d_up]`` in ``dy.dtype``.
    """
    return _product_m(dy, w, counts, trans_b, 2, gate_up)


_small_compiled: set[tuple] = set()


def _compile_small_variant(a: torch.Tensor, c: torch.Tensor, counts: torch.Tensor, e_pow2: int, prec: str,
                           accum: bool) -> None:
    """Compile, on the first large call, the fixed-config kernel the small calls of this shape will
    launch: otherwise its Triton compilation (seconds) lands on whichever later step first has a
    micro-batch with few rows, a stall after warm-up. Launched on a 16 x 16 stand-in of the same
    specialisation (16-divisible sizes, aligned rows, the same E) with no rows, into scratch."""
    key = (a.device, a.dtype, c.dtype, counts.numel(), accum)
    if key in _small_compiled:
        return
    _small_compiled.add(key)
    E = counts.numel()
    dummy = torch.zeros(16, 16, dtype=a.dtype, device=a.device)  # rows exist; every expert owns none
    scratch = torch.zeros(E, 16, 16, dtype=c.dtype, device=a.device)
    kw = _static("k", a)
    try:
        _kgrouped_kernel[(1,)](dummy, dummy, scratch, torch.zeros_like(counts), 16, 16, 16, E, SMALL,
                               E_POW2=e_pow2, DOT_PREC=prec, ACCUM=accum, **kw)
    except Exception as e:  # noqa: BLE001 - only a compile-ahead; the real small call compiles it anyway
        warnings.warn(f"grouped_gemm[triton]: compiling the small-call dW kernel ahead failed ({e}); it will "
                      "compile on first use", RuntimeWarning, stacklevel=3)


def kgrouped(a: torch.Tensor, b: torch.Tensor, counts: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """k-grouped GEMM ``c[e] = a[rows of e]ᵀ @ b[rows of e]`` -> ``[E, P, Q]`` in ``a.dtype``;
    every block is written, so experts with no rows get exact zeros.

    With ``out`` (a contiguous float32 ``[E, P, Q]``, e.g. an fp32 main gradient) the products are
    added into it in the kernel's epilogue from the float32 accumulators (``out += c``; no 16-bit
    ``c`` is written or read back) and ``out`` is returned.

    Raises:
        ValueError: ``out`` of the wrong shape, dtype or layout; unaligned rows on the GPU.
    """
    a, b = a.contiguous(), b.contiguous()
    R, P = a.shape
    Q = b.shape[1]
    E = counts.numel()
    accum = out is not None
    if accum and (out.dtype != torch.float32 or tuple(out.shape) != (E, P, Q) or not out.is_contiguous()
                  or out.device != a.device):
        raise ValueError(f"grouped_gemm[triton]: out must be a contiguous float32 [{E}, {P}, {Q}] on {a.device}; "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device}")
    if R == 0 or P == 0 or Q == 0:
        return out if accum else torch.zeros(E, P, Q, dtype=a.dtype, device=a.device)
    c = out if accum else torch.empty(E, P, Q, dtype=a.dtype, device=a.device)
    counts = counts.to(device=a.device, dtype=torch.int32)
    E, e_pow2, sms, bucket, prec = _common(a, counts)
    ensure_allocator(a.device)
    args = (a, b, c, counts, R, P, Q, E, bucket)
    if _INTERPRETED:
        tma = INTERPRETER_USE_TMA and _tma_ok(a, b)
        kw = dict(_INTERP, USE_TMA=tma, EPI_TMA=tma and not accum)
        grid = (min(sms, E * triton.cdiv(P, kw["BM"]) * triton.cdiv(Q, kw["BN"])),)
        _kgrouped_kernel[grid](*args, E_POW2=e_pow2, DOT_PREC=prec, ACCUM=accum, **kw)
        return c
    if not _tma_ok(a, b):
        raise ValueError("grouped_gemm[triton]: dW operands need 16-byte aligned rows; got "
                         f"{tuple(a.shape)} and {tuple(b.shape)} in {a.dtype}")

    def grid(meta):
        return (max(1, min(sms, E * triton.cdiv(P, meta["BM"]) * triton.cdiv(Q, meta["BN"]))),)
    with torch.cuda.device(a.device):
        if bucket == SMALL:
            kw = _static("k", a)
            _kgrouped_kernel[grid(kw)](*args, E_POW2=e_pow2, DOT_PREC=prec, ACCUM=accum, **kw)
            return c
        _compile_small_variant(a, c, counts, e_pow2, prec, accum)
        if accum:
            _kgrouped_accum_tuned[grid](*args, E_POW2=e_pow2, DOT_PREC=prec, ACCUM=True)
        else:
            _kgrouped_tuned[grid](*args, E_POW2=e_pow2, DOT_PREC=prec)
    return c
