"""Load and save models in the HF transformers folder format (``config.json`` + safetensors).

``from_pretrained`` reads folders written by ``transformers``' ``save_pretrained`` (single file
or sharded with ``model.safetensors.index.json``); ``save_pretrained`` writes folders that
``transformers.AutoModelForCausalLM.from_pretrained`` loads, with the same key names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from xt.core.errors import CheckpointError
from xt.models.common.safetensors_io import CheckpointReader
from xt.models.folder import read_folder_config
from xt.models.hf_stream import PlainState, save_streamed, write_configs
from xt.models.registry import build_model, get_spec

__all__ = ["from_pretrained", "save_pretrained", "generation_config", "checkpoint_keys", "check_checkpoint_fits",
           "check_quantization"]

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
        xt.core.errors.CheckpointError: what the family finds wrong in the folder's config read
            with its weight names (:func:`xt.models.folder.read_folder_config`).
        FileNotFoundError: no weights in ``path``.
        xt.core.errors.CheckpointError: (a ValueError) keys missing from or unexpected in the
            checkpoint, or shape mismatches (named).
    """
    path = Path(path)
    d = read_folder_config(path)  # config.json, read with the weight names (DeepSeek-V3's MTP depths)
    check_quantization(d, path)
    spec = get_spec(d)
    model = build_model(d, device="meta", attn_backend=attn_backend)
    config = model.config
    reader = CheckpointReader(path)
    try:
        keys = checkpoint_keys(reader)
        state = spec.from_hf(keys, reader.get, config, source=str(path))
    finally:
        reader.close()
    check_checkpoint_fits(model, state, path)
    model.load_state_dict(state, strict=True, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        model.lm_head.weight = model.get_submodule(getattr(model, "xt_embed_path", "model.embed_tokens")).weight
    return model.to(device=device or "cpu", dtype=dtype)


def check_quantization(hf_config: dict, path: str | Path) -> None:
    """Refuse a ``quantization_config`` XT would dequantise wrongly: FP8 hub weights are read in
    128 x 128 blocks (``weight_block_size``, DeepSeek-V3 / Kimi K2's), MXFP4 in 32-value blocks.

    Raises:
        xt.core.errors.CheckpointError: another FP8 ``weight_block_size`` (named, with the file).
    """
    qc = hf_config.get("quantization_config") or {}
    block = qc.get("weight_block_size") if isinstance(qc, dict) and qc.get("quant_method") == "fp8" else None
    if block is not None and list(block) != [128, 128]:
        raise CheckpointError(f"{Path(path) / 'config.json'}: quantization_config.weight_block_size = {block}: XT "
                              "dequantises FP8 weights in 128 x 128 blocks only")


def checkpoint_keys(reader: CheckpointReader) -> list[str]:
    """The keys of `reader` that a load maps (buffers HF saves but XT recomputes, e.g.
    ``rotary_emb.inv_freq``, left out)."""
    return [k for k in reader.keys() if not k.endswith(_IGNORED_SUFFIXES)]


def check_checkpoint_fits(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Check that `state` (XT keys, e.g. a family's ``from_hf`` of a checkpoint; meta tensors do)
    has exactly `model`'s state-dict keys with the same shapes.

    Raises:
        xt.core.errors.CheckpointError: missing or unexpected keys (up to 10 of each named), or the
            first shape that differs, with the folder `path`.
    """
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


def save_pretrained(model: nn.Module, path: str | Path, *, max_shard_size: int | str = "5GB",
                    state_dict: dict[str, torch.Tensor] | None = None, tensors=None, rank: int = 0, world: int = 1,
                    barrier: Callable[[], None] | None = None) -> list[str]:
    """Write ``config.json``, ``generation_config.json`` (:func:`generation_config`) and the
    weights of ``model`` (HF keys) into folder ``path``.

    Weights larger than ``max_shard_size`` (bytes or ``"5GB"``-style) are split into shards with
    an index. Files are written atomically (temporary name, then rename). With tied embeddings
    only ``model.embed_tokens.weight`` is written. The weights are streamed one XT tensor at a
    time (:func:`xt.models.hf_stream.save_streamed`).

    A sharded (FSDP2/EP) model: call it on every rank with ``tensors`` =
    ``xt.parallel.full_state.FullState(model, ep_group)`` (gathers one tensor at a time), this
    rank's ``rank``, the ``world`` size and the run's ``barrier``: each rank writes its share of the
    files and no rank holds the full model (``xt.parallel.exporter(save_pretrained, dist)`` does
    this). ``state_dict``: the full state dict with XT keys instead of the model's own (one rank).

    Returns:
        The file names written (the whole folder's, on every rank).

    Raises:
        ValueError: the model has no ``config`` with ``to_hf_dict()``.
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_hf_dict"):
        raise ValueError(f"{type(model).__name__} has no typed config with to_hf_dict(); cannot save")
    path = Path(path)
    if tensors is None:
        tensors = PlainState(model) if state_dict is None else _DictState(state_dict)
    files, dtype = save_streamed(model, path, tensors, max_shard_size=max_shard_size, rank=rank, world=world,
                                 barrier=barrier)
    if rank == 0:
        write_configs(model, path, dtype, generation_config)
    return files + ["config.json", GENERATION_CONFIG]


class _DictState(PlainState):
    """A given full state dict (XT keys) as a streamed state."""

    def __init__(self, sd: dict[str, torch.Tensor]) -> None:
        self._sd = sd
        self.layout = [(k, tuple(v.shape), v.dtype) for k, v in sd.items()]


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
