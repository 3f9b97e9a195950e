"""The zoo's linear layer: ``nn.Linear`` whose product goes through `xt.kernels.linear.linear`.

Same parameters, names, initialisation and state dict as ``nn.Linear`` (HF checkpoints load
unchanged; ``isinstance(m, nn.Linear)`` holds). The only difference is in the backward when the
weight is a bf16/fp16 compute copy of an fp32 master (``train.weight_cast = "per_step"``): its
gradient is added into the master's fp32 ``.grad`` by the GEMM itself (see that module).
"""
from __future__ import annotations

import torch
from torch import nn

from xt.kernels.linear import linear

__all__ = ["Linear"]


class Linear(nn.Linear):
    """``nn.Linear(in_features, out_features, bias)``; ``forward(x[..., in]) -> [..., out]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
