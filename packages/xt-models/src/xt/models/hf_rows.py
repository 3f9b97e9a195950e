"""Read only some rows of a model's parameters from an HF safetensors folder (sharded HF load).

:func:`hf_row_reader` returns ``read(name, start, stop) -> tensor``: rows ``[start, stop)`` of dim 0
of the XT parameter (or persistent buffer) `name`, read from the checkpoint with safetensors'
``get_slice`` so that a rank touches only the bytes of the rows it owns (xt.parallel's
``materialize_(model, device, read=...)`` asks for exactly those). Each family says how its hub
keys map to XT's (``ModelSpec.hf_rows``: a key rename and a row loader, e.g. GPT-OSS's fused and
MXFP4 experts, DeepSeek-V3's FP8 block scales and MTP layers); what is common is here:

* per-expert hub keys (``{prefix}.experts.{e}.{gate,up,down}_proj.weight``) become rows of XT's
  stacked ``gate_up_proj [E, 2F, D]`` / ``down_proj [E, D, F]``: rows are experts, each read whole;
* a tied ``lm_head.weight`` is read as the embedding (the model class's ``xt_embed_path``, e.g. a
  vision-language model's ``model.language_model.embed_tokens``);
* before anything is read, the family's ``from_hf`` runs on meta tensors of the stored shapes and
  dtypes and the result is checked against the model's state dict (the same check as
  :func:`xt.models.from_pretrained`), so a checkpoint of another model fails at once, on every rank.

The rows a rank reads are in the checkpoint's dtype after dequantisation (bf16 for FP8 and MXFP4
weights), exactly the values :func:`xt.models.from_pretrained` gives for those rows.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch

from xt.core.errors import CheckpointError
from xt.models.common.expert_keys import EMBED_KEY, HEAD_KEY
from xt.models.common.safetensors_io import CheckpointReader
from xt.models.common.hf_config import read_config_json
from xt.models.hf_io import check_checkpoint_fits, check_quantization, checkpoint_keys
from xt.models.registry import build_model, spec_of_config

__all__ = ["hf_row_reader"]

_STACKED = {".experts.gate_up_proj": ("gate_proj", "up_proj"), ".experts.down_proj": ("down_proj",)}
_PER_EXPERT = re.compile(r"^(.*\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def hf_row_reader(path: str | Path, config) -> tuple[Callable[[str, int, int], torch.Tensor], CheckpointReader]:
    """A row reader of the HF folder `path` for a model of typed `config` (checked to fit it).

    Returns:
        ``(read, reader)``: ``read(name, start, stop)`` gives rows of XT parameter or persistent
        buffer `name` (``reader.bytes_read`` counts the bytes read so far).

    Raises:
        NotImplementedError: a family without a sharded load (``ModelSpec.hf_rows`` is None).
        FileNotFoundError / ValueError: no safetensors in `path` (see ``CheckpointReader``).
        xt.core.errors.CheckpointError: the checkpoint does not fit the model of `config` (missing,
            unexpected keys or shapes, named), or FP8 blocks other than 128 x 128; later, ``read``
            of a name it does not hold.
    """
    spec = spec_of_config(config)
    if spec.hf_rows is None:
        raise NotImplementedError(f"a sharded HF load of {type(config).__name__} is not supported; load it "
                                  "whole (xt.models.from_pretrained)")
    if (Path(path) / "config.json").is_file():
        check_quantization(read_config_json(Path(path)), path)
    reader = CheckpointReader(path)
    keys = checkpoint_keys(reader)
    rename, load_rows = spec.hf_rows(config, set(keys))

    def meta(key: str) -> torch.Tensor:
        return torch.empty(reader.shape(key), dtype=reader.dtype(key), device="meta")

    check_checkpoint_fits(build_model(config, device="meta"), spec.from_hf(keys, meta, config, source=str(path)), path)
    embed_key = getattr(spec.model_cls, "xt_embed_path", EMBED_KEY.removesuffix(".weight")) + ".weight"
    back = {new: k for k in keys if (new := rename(k)) is not None}
    experts: dict[str, dict[int, dict[str, str]]] = {}
    for new, k in back.items():
        m = _PER_EXPERT.match(new)
        if m:
            experts.setdefault(m[1], {}).setdefault(int(m[2]), {})[m[3]] = k

    def expert_rows(prefix: str, projs: tuple[str, ...], start: int, stop: int) -> torch.Tensor:
        by_e = experts.get(prefix)
        if not by_e:
            raise CheckpointError(f"{path}: no checkpoint tensors for {prefix}")
        keys_of = [[by_e[e][p] for p in projs] for e in range(start, stop)]
        if keys_of:
            return torch.stack([torch.cat([load_rows(k, reader.get_rows, 0, reader.shape(k)[0]) for k in ks])
                                for ks in keys_of])
        first = [load_rows(by_e[0][p], reader.get_rows, 0, 0) for p in projs]
        return first[0].new_empty((0, sum(reader.shape(by_e[0][p])[0] for p in projs), first[0].shape[1]))

    def read(name: str, start: int, stop: int) -> torch.Tensor:
        if name == HEAD_KEY and config.tie_word_embeddings:
            name = embed_key
        if name in back:
            return load_rows(back[name], reader.get_rows, start, stop)
        for suffix, projs in _STACKED.items():
            if name.endswith(suffix):
                return expert_rows(name[: -len(suffix)] + ".experts", projs, start, stop)
        raise CheckpointError(f"{path}: no checkpoint tensor for {name}")

    return read, reader
