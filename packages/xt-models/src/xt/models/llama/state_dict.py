"""Llama HF checkpoint key mapping (both ways); file I/O is :mod:`xt.models.hf_io`.

HF and XT Llama modules share names, so the mapping is the identity except for tied embeddings:
HF checkpoints of tied models carry no ``lm_head.weight`` (it is ``model.embed_tokens.weight``).
"""
from __future__ import annotations

import torch

from xt.models.llama.config import LlamaConfig

__all__ = ["hf_to_xt", "xt_to_hf"]


def hf_to_xt(sd: dict[str, torch.Tensor], config: LlamaConfig) -> dict[str, torch.Tensor]:
    """HF state dict -> XT state dict (``lm_head.weight`` filled from the embedding when tied)."""
    out = dict(sd)
    if config.tie_word_embeddings:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def xt_to_hf(sd: dict[str, torch.Tensor], config: LlamaConfig) -> dict[str, torch.Tensor]:
    """XT state dict -> HF state dict (drops ``lm_head.weight`` when tied)."""
    out = {k: v for k, v in sd.items()}
    if config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out
