"""Load and save models in the HF transformers folder format (``config.json`` + safetensors).

``from_pretrained`` reads folders written by ``transformers``' ``save_pretrained`` (single file
or sharded with ``model.safetensors.index.json``); ``save_pretrained`` writes folders that
``transformers.AutoModelForCausalLM.from_pretrained`` loads, with the same key names.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from xt.core.errors import CheckpointError
from xt.models.common.hf_config import read_config_json
from xt.models.common.safetensors_io import CheckpointReader, atomic_write_text, write_safetensors
from xt.models.registry import build_model, get_spec

__all__ = ["from_pretrained", "save_pretrained", "generation_config"]

GENERATION_CONFIG = "generation_config.json"
_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")

_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def from_pretrained(path: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                    attn_backend: str = "auto") -> nn.Module:
    """Build the model of ``path/config.json`` and load its weights.

    Args:
        path: folder with ``config.json`` and ``model.safetensors`` (or shards + index).
        dtype: cast parameters to this dtype (default: the checkpoint's).
        device: target device (default CPU).
        attn_backend: core attention backend.

    Raises:
        ConfigError: bad ``config.json``.
        FileNotFoundError: no weights in ``path``.
        xt.core.errors.CheckpointError: (a ValueError) keys missing from or unexpected in the
            checkpoint, or shape mismatches (named).
    """
    path = Path(path)
    d = read_config_json(path)
    spec = get_spec(d)
    model = build_model(d, device="meta", attn_backend=attn_backend)
    config = model.config
    reader = CheckpointReader(path)
    try:
        keys = [k for k in reader.keys() if not k.endswith(_IGNORED_SUFFIXES)]
        state = spec.from_hf(keys, reader.get, config, source=str(path))
    finally:
        reader.close()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: checkpoint does not match {type(model).__name__}: "
                              f"missing {missing[:10]}, unexpected {unexpected[:10]}")
    for k, t in expected.items():
        if tuple(state[k].shape) != tuple(t.shape):
            raise CheckpointError(f"{path}: {k} has shape {tuple(state[k].shape)}, the config needs "
                                  f"{tuple(t.shape)}")
    model.load_state_dict(state, strict=True, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        model.lm_head.weight = model.get_submodule(getattr(model, "xt_embed_path", "model.embed_tokens")).weight
    return model.to(device=device or "cpu", dtype=dtype)


def save_pretrained(model: nn.Module, path: str | Path, *, max_shard_size: int | str = "5GB",
                    state_dict: dict[str, torch.Tensor] | None = None) -> list[str]:
    """Write ``config.json``, ``generation_config.json`` (:func:`generation_config`) and the
    weights of ``model`` (HF keys) into folder ``path``.

    Weights larger than ``max_shard_size`` (bytes or ``"5GB"``-style) are split into shards with
    an index. Files are written atomically (temporary name, then rename). With tied embeddings
    only ``model.embed_tokens.weight`` is written.

    For a sharded (FSDP2/EP) model pass ``state_dict``: the full, unsharded state dict with our
    keys (e.g. ``torch.distributed.checkpoint.state_dict.get_model_state_dict(model,
    options=StateDictOptions(full_state_dict=True, cpu_offload=True))``), and call this on one rank.

    Returns:
        The file names written.

    Raises:
        ValueError: the model has no ``config`` with ``to_hf_dict()``.
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_hf_dict"):
        raise ValueError(f"{type(model).__name__} has no typed config with to_hf_dict(); cannot save")
    hf = config.to_hf_dict()
    spec = get_spec(hf)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = model.state_dict() if state_dict is None else state_dict
    dtype = next(t for t in state.values() if t.is_floating_point()).dtype
    hf["dtype"] = str(dtype).removeprefix("torch.")
    files = write_safetensors(spec.to_hf(state, config), path, max_shard_size)
    atomic_write_text(path / "config.json", json.dumps(hf, indent=2, sort_keys=True) + "\n")
    atomic_write_text(path / GENERATION_CONFIG, json.dumps(generation_config(hf), indent=2, sort_keys=True) + "\n")
    return files + ["config.json", GENERATION_CONFIG]


def generation_config(hf_config: dict) -> dict:
    """The ``generation_config.json`` of an HF ``config.json`` dict: its special token ids
    (``bos_token_id``, ``eos_token_id``, ``pad_token_id``, those it sets) and greedy decoding
    (``do_sample = false``), the fields transformers' ``GenerationConfig.from_model_config`` takes
    from a model config; ``generate`` then stops at the model's end-of-sequence token."""
    out = {k: hf_config[k] for k in _TOKEN_IDS if hf_config.get(k) is not None}
    if "pad_token_id" not in out and "eos_token_id" in out:  # generate() pads finished rows with it
        eos = out["eos_token_id"]
        out["pad_token_id"] = eos[0] if isinstance(eos, list) else eos
    return {**out, "do_sample": False}
