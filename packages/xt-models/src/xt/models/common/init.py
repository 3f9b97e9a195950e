"""Weight initialisation and routing statistics shared by the model families."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["init_linear_and_embedding_", "expert_load_fractions"]


@torch.no_grad()
def init_linear_and_embedding_(model: nn.Module, std: float) -> None:
    """HF-style init of every ``nn.Linear`` / ``nn.Embedding`` in `model`: weights normal(0, `std`)
    (HF ``initializer_range``), biases zero. Other modules (norms, experts, sinks) are left to their
    owners."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


def expert_load_fractions(stats: Sequence) -> torch.Tensor:
    """``[L_moe, E]`` share of each layer's routed slots that went to each expert (rows sum to 1;
    an empty layer is all zeros). `stats` are the routers' outputs with ``tokens_per_expert [E]``."""
    load = torch.stack([s.tokens_per_expert for s in stats]).float()
    return load / load.sum(dim=1, keepdim=True).clamp(min=1)
