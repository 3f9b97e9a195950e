"""Writing the trained model as an HF checkpoint, from one process or from a sharded layout."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from xt.models import save_pretrained

__all__ = ["export_hf"]

_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "_orig_mod.")


def _clean(name: str) -> str:
    for p in _WRAPPER_PREFIXES:
        name = name.replace(p, "")
    return name


def export_hf(model: nn.Module, path: Path, dist=None) -> None:
    """Save `model` as an HF checkpoint folder (config.json + safetensors with HF key names).

    Under xt.parallel (`dist` a ``ParallelDistContext``, any world size) every rank must call this:
    parameters are gathered to full tensors (FSDP shards and expert-parallel slices), and rank 0
    writes them. Writes are atomic per file (xt.models.save_pretrained).

    Raises:
        ValueError: the gathered parameters do not cover the model's HF keys (named).
    """
    if dist is None or not hasattr(dist, "meshes"):  # one process, plain (unsharded) parameters
        save_pretrained(model, path)
        return
    from xt.parallel.gather import gather_full
    full = {_clean(k): v for k, v in gather_full(model, getattr(dist.meshes, "ep_group", None)).items()}
    if dist.is_main:
        if getattr(model.config, "tie_word_embeddings", False):
            full["lm_head.weight"] = full.get("lm_head.weight", full["model.embed_tokens.weight"])
        save_pretrained(model, path, state_dict={k: v.to("cpu") for k, v in full.items()})
    dist.barrier()
