"""RMSNorm (Zhang & Sennrich 2019, "Root Mean Square Layer Normalization", arXiv:1910.07467).

Numerics follow the Qwen/Llama convention used by HF transformers: the statistic is computed in
float32, the normalised value is cast back to the input dtype and then scaled by ``weight``.
"""
from __future__ import annotations

import torch
from torch import nn

from xt.kernels.norm import rms_norm

__all__ = ["RMSNorm"]


class RMSNorm(nn.Module):
    """``y = weight * (x / sqrt(mean(x**2, -1) + eps))`` over the last dimension.

    Args:
        hidden_size: size of the last dimension (``weight`` is ``[hidden_size]``, initialised to 1).
        eps: added to the mean square (HF ``rms_norm_eps``).

    Shapes: ``x[..., hidden_size]`` any float dtype -> same shape; the result dtype is the
    promotion of ``x.dtype`` and ``weight.dtype`` (equal in practice).
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = float(eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """Normalise ``x[..., hidden_size]``; see the class docstring.

        With ``residual`` (same shape), normalises ``s = x + residual`` and returns ``(y, s)``: the
        pre-norm block's residual add and the next norm in one fused op on CUDA
        (`xt.kernels.norm.rms_norm`, backend ``kernels.rms_norm``).
        """
        return rms_norm(x, self.weight, self.eps, residual)

    def reset_parameters(self) -> None:
        """Set ``weight`` to ones."""
        nn.init.ones_(self.weight)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
