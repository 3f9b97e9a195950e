"""What the chunked LM-head ops share: input checks, chunk size, compute dtype, backend kind.

Shape legend: T tokens, D hidden size, V vocabulary size, C token chunk.

Used by :mod:`xt.kernels.loss.linear_ce` (the reduced cross-entropy) and
:mod:`xt.kernels.loss.per_token` / :mod:`xt.kernels.loss.log_probs` (per-token outputs).
"""
from __future__ import annotations

import torch

from xt.kernels._autocast import autocast_dtype

__all__ = ["default_chunk_size", "check_head_inputs", "resolve_chunk", "compute_dtype", "chunk_kind",
           "backprop_chunk", "weight_grad_buffer"]


def default_chunk_size(num_tokens: int, vocab_size: int) -> int:
    """Rows per chunk: at most 2^28 logits (1 GiB in float32), a multiple of 128 when > 128."""
    c = max(1, (1 << 28) // max(vocab_size, 1))
    if c > 128:
        c = c // 128 * 128
    return max(1, min(num_tokens, c))


def check_head_inputs(fn: str, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> None:
    """Raise ``ValueError`` (prefixed with ``fn``) unless hidden is ``[T, D]``, weight ``[V, D]`` of
    the same dtype, and labels ``[T]`` of an integer dtype."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"{fn}: hidden must be [T, D] and weight [V, D]; got "
                         f"{tuple(hidden.shape)} and {tuple(weight.shape)}")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"{fn}: labels must be [T={hidden.shape[0]}]; got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{fn}: labels must be an integer tensor; got {labels.dtype}")
    if hidden.dtype != weight.dtype and not _autocast_pair(hidden, weight):
        raise ValueError(f"{fn}: hidden is {hidden.dtype} but weight is {weight.dtype}")


def _autocast_pair(hidden: torch.Tensor, weight: torch.Tensor) -> bool:
    """Under autocast a float32 operand meets one already in autocast's dtype (fp32 hidden states
    and a bf16 compute copy of the head, ``train.weight_cast = "per_step"``): both run in that
    dtype, as ``nn.Linear`` would."""
    dt = autocast_dtype(hidden)
    return dt is not None and {hidden.dtype, weight.dtype} == {torch.float32, dt}


def resolve_chunk(fn: str, chunk_size, num_tokens: int, vocab_size: int) -> int:
    """``chunk_size``, or :func:`default_chunk_size` when None.

    Raises:
        ValueError: ``chunk_size`` is not a positive int.
    """
    if chunk_size is None:
        return default_chunk_size(num_tokens, vocab_size)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{fn}: chunk_size must be a positive int or None; got {chunk_size!r}")
    return chunk_size


def compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the LM-head product runs in: autocast's when autocast is on for ``hidden``'s
    device and either operand is float32 (as for an ``nn.Linear`` head under autocast), else the
    operands' common dtype."""
    dt = autocast_dtype(hidden)
    if dt is not None and torch.float32 in (hidden.dtype, weight.dtype):
        return dt
    return hidden.dtype


def weight_grad_buffer(weight: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The ``dweight`` accumulator of ``weight``'s shape in float32 (float64 for float64): chunks
    add into it at full precision and it is rounded to ``weight.dtype`` once, at the end.

    Uninitialised when ``num_tokens > 0``: the first chunk writes it (``backprop_chunk(...,
    first=True)``), so no zero-fill pass over ``[V, D]`` (1.2 GB for a 151,936 x 2,048 head) is
    made and read back; zero when there are no tokens (no chunk runs)."""
    make = torch.empty if num_tokens > 0 else torch.zeros
    return make(weight.shape, dtype=torch.promote_types(weight.dtype, torch.float32), device=weight.device)


def chunk_kind(backend: str, device: torch.device) -> str:
    """The per-chunk step, ``"triton"`` or ``"torch"``, that a chunked backend name runs:
    ``"triton"`` for ``"triton"``, and for ``"auto"`` on a CUDA device where Triton is usable;
    ``"torch"`` otherwise (``"torch"``, ``"npu"``, ``"auto"`` off CUDA)."""
    if backend == "auto":
        from xt.kernels._triton_support import triton_usable_on
        return "triton" if device.type == "cuda" and triton_usable_on(device) else "torch"
    return "triton" if backend == "triton" else "torch"


def backprop_chunk(g: torch.Tensor, h: torch.Tensor, w_c: torch.Tensor, rows: slice,
                   grad_h: torch.Tensor | None, grad_w: torch.Tensor | None, first: bool = False) -> None:
    """Push one chunk's logits gradient through the head product ``logits = h @ w_cᵀ``.

    Writes ``grad_h[rows] = g @ w_c`` and adds ``gᵀ @ h`` into ``grad_w`` (each skipped when
    None), in place into the buffers' own dtypes (``addmm_``/``mm(out=)`` when they match the
    compute dtype, else through a temporary). With `first` (the first chunk) ``grad_w`` is
    written, not added into: the same values as adding into zeros (``0 + x = x``; the temporary
    of a 16-bit product is the same GEMM either way).

    Args:
        g: ``[C, V]`` logits gradient, compute dtype. h: ``[C, D]`` hidden rows, compute dtype.
        w_c: ``[V, D]`` weight in the compute dtype. rows: the chunk's rows of ``grad_h``.
        grad_h: ``[T, D]`` or None. grad_w: ``[V, D]`` or None (uninitialised when `first`).
    """
    if grad_h is not None:
        if g.dtype == grad_h.dtype:
            torch.mm(g, w_c, out=grad_h[rows])
        else:
            grad_h[rows] = g @ w_c
    if grad_w is not None:
        if g.dtype == grad_w.dtype:
            if first:
                torch.mm(g.t(), h, out=grad_w)
            else:
                grad_w.addmm_(g.t(), h)
        elif first:
            grad_w.copy_(g.t() @ h)
        else:
            grad_w += g.t() @ h
