"""Llama HF checkpoint key mapping (both ways); file I/O is :mod:`xt.models.hf_io`.

HF and XT Llama modules share names, so the mapping is the identity except for tied embeddings:
HF checkpoints of tied models carry no ``lm_head.weight`` (it is ``model.embed_tokens.weight``).
"""
from __future__ import annotations

from typing import Callable

import torch

from xt.models.common.expert_keys import tie_head
from xt.models.llama.config import LlamaConfig

__all__ = ["from_hf", "hf_to_xt", "xt_to_hf"]


def from_hf(keys: list[str], get: Callable[[str], torch.Tensor], config: LlamaConfig,
            source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """HF checkpoint keys -> XT state dict, reading one tensor at a time through `get`
    (``lm_head.weight`` filled from the embedding when tied).

    Raises:
        ValueError: a tied model without ``model.embed_tokens.weight``.
    """
    return tie_head({k: get(k) for k in keys}, config.tie_word_embeddings, source)


def hf_to_xt(sd: dict[str, torch.Tensor], config: LlamaConfig) -> dict[str, torch.Tensor]:
    """`from_hf` over an in-memory HF state dict."""
    return from_hf(list(sd), sd.__getitem__, config)


def xt_to_hf(sd: dict[str, torch.Tensor], config: LlamaConfig) -> dict[str, torch.Tensor]:
    """XT state dict -> HF state dict (drops ``lm_head.weight`` when tied)."""
    out = {k: v for k, v in sd.items()}
    if config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out
