"""Llama HF checkpoint key mapping (both ways) and safetensors load/save.

HF and XT Llama modules share names, so the mapping is the identity except for tied embeddings:
HF checkpoints of tied models carry no ``lm_head.weight`` (it is ``model.embed_tokens.weight``).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from xt.models.llama.config import LlamaConfig

__all__ = ["hf_to_xt", "xt_to_hf", "load_safetensors_dir", "save_safetensors", "load_hf_into"]


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


def load_safetensors_dir(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of ``*.safetensors`` files in a directory (or one file).

    Raises:
        FileNotFoundError: no ``.safetensors`` file there. ValueError: a key present in two files.
    """
    from safetensors.torch import load_file

    p = Path(path)
    files = [p] if p.is_file() else sorted(p.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {p}")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        part = load_file(str(f))
        dup = set(part) & set(out)
        if dup:
            raise ValueError(f"{f}: key {sorted(dup)[0]!r} also appears in another shard")
        out.update(part)
    return out


def save_safetensors(sd: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write one ``model.safetensors`` (tensors made contiguous; shared storage is cloned)."""
    from safetensors.torch import save_file

    p = Path(path)
    if p.suffix != ".safetensors":
        p.mkdir(parents=True, exist_ok=True)
        p = p / "model.safetensors"
    seen: set[int] = set()
    clean = {}
    for k, v in sd.items():
        v = v.detach().contiguous()
        if v.data_ptr() in seen:
            v = v.clone()
        seen.add(v.data_ptr())
        clean[k] = v
    save_file(clean, str(p), metadata={"format": "pt"})


def load_hf_into(model: nn.Module, hf_sd: dict[str, torch.Tensor], converter, config) -> None:
    """``model.load_state_dict(converter(hf_sd, config), strict=True)`` with a readable error.

    Raises:
        ValueError: missing or unexpected keys (the first few are named).
    """
    sd = converter(hf_sd, config)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
