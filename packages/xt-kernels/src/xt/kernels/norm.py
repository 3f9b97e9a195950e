"""RMSNorm (optionally with the residual add before it) and rotary embeddings: the glue ops.

Ops of the kernel registry (``[kernels] rms_norm``, ``rope``):

* ``rms_norm(x[..., D], weight[D], eps, residual=None)``: with ``residual``, ``s = x + residual``
  first and ``(y, s)`` is returned, else ``y``; ``y = weight * (s / sqrt(mean(s**2, -1) + eps))``
  with the statistic in float32 and the normalised value cast back to ``s.dtype`` before the
  scale (the HF Qwen/Llama numerics; the result dtype is the promotion of ``s`` and ``weight``).
  Zhang & Sennrich 2019, "Root Mean Square Layer Normalization", arXiv:1910.07467.
* ``rope(x[T, H, Dh], cos[T, Dh], sin[T, Dh])``: rotate-half RoPE (Su et al. 2021, "RoFormer",
  arXiv:2104.09864) in float32, result in ``x.dtype``.
* ``qk_norm_rope(q, k, wq, wk, eps_q, eps_k, cos, sin)``: Qwen3's per-head RMSNorm of q and k, then
  RoPE of both, as one op (one compiled graph instead of four calls; its backend is
  ``kernels.rms_norm``'s). Inside an autocast region the results come in the autocast dtype
  (the cast core attention applies next, done here).

Backends: ``torch``/``reference``/``npu`` run the PyTorch ops below eagerly; ``triton`` compiles
them with ``torch.compile`` (Inductor emits one fused Triton kernel each way; CUDA tensors only);
``auto`` is ``triton`` for CUDA tensors and ``torch`` otherwise. Same math either way; a
compiled reduction may round the mean in another order (last-bit differences).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from xt.core.compiled import CudaCompiled
from xt.kernels import registry

__all__ = ["rms_norm", "rope", "qk_norm_rope", "rms_norm_reference", "rope_reference"]


def _norm(s: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    sf = s.float()
    return weight * (sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + eps)).to(s.dtype)


def _add_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    s = x + residual
    return _norm(s, weight, eps), s


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """Eager PyTorch RMSNorm; contract in the module docstring."""
    return _norm(x, weight, eps) if residual is None else _add_norm(x, residual, weight, eps)


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Eager PyTorch rotate-half RoPE; contract in the module docstring."""
    xf = x.float()
    half = x.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos[:, None, :] + rotated * sin[:, None, :]).to(x.dtype)


def _qk_norm_rope(q, k, wq, wk, eps_q: float, eps_k: float, cos, sin, out_dtype: torch.dtype | None):
    q = rope_reference(_norm(q, wq, eps_q), cos, sin)
    k = rope_reference(_norm(k, wk, eps_k), cos, sin)
    return (q, k) if out_dtype is None else (q.to(out_dtype), k.to(out_dtype))


_compiled_norm = CudaCompiled(_norm, "rms_norm[triton]")
_compiled_qk = CudaCompiled(_qk_norm_rope, "qk_norm_rope[triton]", dynamic_args=(0, 1, 6, 7))
_compiled_add_norm = CudaCompiled(_add_norm, "rms_norm[triton] (with residual)", dynamic_args=(0, 1))
_compiled_rope = CudaCompiled(rope_reference, "rope[triton]", dynamic_args=(0, 1, 2))


def _rms_norm_compiled(x, weight, eps, residual=None):
    if not x.is_cuda:
        raise ValueError(f"kernels.rms_norm = 'triton' needs CUDA tensors; got {x.device} (use 'auto' or 'torch')")
    return _compiled_norm(x, weight, float(eps)) if residual is None else \
        _compiled_add_norm(x, residual, weight, float(eps))


def _rope_compiled(x, cos, sin):
    if not x.is_cuda:
        raise ValueError(f"kernels.rope = 'triton' needs CUDA tensors; got {x.device} (use 'auto' or 'torch')")
    return _compiled_rope(x, cos, sin)


def _factory(eager: Callable, compiled: Callable) -> Callable[[str], Callable]:
    def auto(x, *args, **kw):
        return (compiled if x.is_cuda else eager)(x, *args, **kw)

    def pick(name: str) -> Callable:
        return {"auto": auto, "triton": compiled}.get(name, eager)
    return pick


registry.register("rms_norm", _factory(rms_norm_reference, _rms_norm_compiled))
registry.register("rope", _factory(rope_reference, _rope_compiled))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
             backend: str | None = None):
    """RMSNorm of ``x[..., D]`` (after ``x + residual`` when given); see the module docstring.

    Args:
        x: ``[..., D]`` any float dtype.
        weight: ``[D]``.
        eps: added to the mean square.
        residual: optional tensor of ``x``'s shape added first (the pre-norm residual stream).
        backend: registry backend name (None: the process-wide ``kernels.rms_norm``).

    Returns:
        ``y`` (``[..., D]``), or ``(y, x + residual)`` with ``residual``.

    Raises:
        ValueError: unknown backend; ``"triton"`` with CPU tensors.
    """
    return registry.dispatch("rms_norm", backend)(x, weight, eps, residual)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """Rotate ``x[T, H, Dh]`` by ``cos, sin [T, Dh]`` (float32 math, result in ``x.dtype``).

    Raises:
        ValueError: unknown backend; ``"triton"`` with CPU tensors.
    """
    return registry.dispatch("rope", backend)(x, cos, sin)


def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, eps_q: float, eps_k: float,
                 cos: torch.Tensor, sin: torch.Tensor, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``rope(rms_norm(q, wq)), rope(rms_norm(k, wk))`` for ``q[T, H, Dh]``, ``k[T, G, Dh]``,
    ``wq, wk [Dh]``, ``cos, sin [T, Dh]``.

    Returns:
        ``(q, k)`` in the autocast dtype inside an autocast region when they would be float32 (as
        core attention would cast them), else in the promoted dtype of the inputs and weights.

    Raises:
        ValueError: unknown backend; ``"triton"`` with CPU tensors.
    """
    from xt.kernels._autocast import autocast_dtype
    name = backend or registry.get_backend("rms_norm")
    registry.dispatch("rms_norm", name)  # validates the name
    out_dtype = autocast_dtype(q) if torch.promote_types(q.dtype, wq.dtype) == torch.float32 else None
    compiled = name == "triton" or (name == "auto" and q.is_cuda)
    if name == "triton" and not q.is_cuda:
        raise ValueError(f"kernels.rms_norm = 'triton' needs CUDA tensors; got {q.device} (use 'auto' or 'torch')")
    fn = _compiled_qk if compiled else _qk_norm_rope
    return fn(q, k, wq, wk, float(eps_q), float(eps_k), cos, sin, out_dtype)
