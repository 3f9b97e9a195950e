"""Dense SwiGLU feed-forward (Shazeer 2020, "GLU Variants Improve Transformer", arXiv:2002.05202).

``down_proj(silu(gate_proj(x)) * up_proj(x))`` with HF names (``nn.Linear``, no bias).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xt.models.common.linear import Linear

__all__ = ["SwiGLUMLP"]


class SwiGLUMLP(nn.Module):
    """SwiGLU MLP ``[..., D] -> [..., D]`` with intermediate size F.

    Args:
        hidden_size: D.
        intermediate_size: F.
        hidden_act: only ``"silu"`` is supported.

    Raises:
        ValueError: another ``hidden_act``.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str = "silu") -> None:
        super().__init__()
        if hidden_act != "silu":
            raise ValueError(f"hidden_act={hidden_act!r} not supported; allowed: ['silu']")
        self.gate_proj = Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x[..., D] -> [..., D]`` in ``x.dtype``."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
