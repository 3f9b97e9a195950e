"""Qwen3 / Qwen3-MoE state dict <-> HF checkpoint keys.

Our keys equal HF's except the experts: HF stores ``model.layers.N.mlp.experts.E.{gate_proj,
up_proj,down_proj}.weight`` per expert, we stack them (``mlp.experts.gate_up_proj [E, 2F, D]``,
``mlp.experts.down_proj [E, D, F]``). With ``tie_word_embeddings`` only
``model.embed_tokens.weight`` is written (as transformers does) and ``lm_head.weight`` is read from it.
"""
from __future__ import annotations

from typing import Callable

import torch

from xt.models.common.expert_keys import HEAD_KEY, stack_experts, tie_head, unstack_experts
from xt.models.qwen3.config import Qwen3Config

__all__ = ["to_hf", "from_hf"]

def to_hf(state: dict[str, torch.Tensor], config: Qwen3Config) -> dict[str, torch.Tensor]:
    """Our ``model.state_dict()`` -> HF keys (per-expert weights; ``lm_head`` dropped when tied)."""
    out = unstack_experts(state)
    if config.tie_word_embeddings:
        out.pop(HEAD_KEY, None)
    return out


def from_hf(keys: list[str], get: Callable[[str], torch.Tensor], config: Qwen3Config,
            source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """HF checkpoint keys -> our state dict (load with ``model.load_state_dict(..., strict=True)``).

    Also accepts checkpoints that already hold stacked ``experts.gate_up_proj`` / ``down_proj``.

    Raises:
        ValueError: missing expert weights, or a tied model without ``model.embed_tokens.weight``.
    """
    return tie_head(stack_experts(keys, get, source), config.tie_word_embeddings, source)
