"""Writing the trained model as an HF checkpoint, from one process or from a sharded layout."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from xt.models import build_model, save_pretrained

__all__ = ["export_hf"]

_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "_orig_mod.")


def _clean(name: str) -> str:
    for p in _WRAPPER_PREFIXES:
        name = name.replace(p, "")
    return name


def export_hf(model: nn.Module, path: Path, dist=None) -> None:
    """Save `model` as an HF checkpoint folder (config.json + safetensors with HF key names).

    In a distributed run (`dist` with ``world_size > 1``) every rank must call this: parameters are
    gathered to full tensors (FSDP shards and expert-parallel slices), and rank 0 writes them
    through an unsharded copy of the model. Writes are atomic per file (xt.models.save_pretrained).

    Raises:
        ValueError: the gathered names do not match the model's (an unknown wrapper).
    """
    if dist is None or getattr(dist, "world_size", 1) == 1:
        save_pretrained(model, path)
        return
    from xt.parallel.gather import gather_full
    full = {_clean(k): v for k, v in gather_full(model, getattr(dist.meshes, "ep_group", None)).items()}
    if dist.is_main:
        plain = build_model(model.config, device="meta")
        expected = {k for k, _ in plain.named_parameters()}
        missing = expected - set(full)
        if missing:
            raise ValueError(f"export_hf: gathered parameters lack {sorted(missing)[:5]} ...")
        plain.load_state_dict({k: full[k].to("cpu") for k in expected}, strict=False, assign=True)
        if getattr(model.config, "tie_word_embeddings", False):
            plain.lm_head.weight = plain.model.embed_tokens.weight
        save_pretrained(plain, path)
    dist.barrier()
