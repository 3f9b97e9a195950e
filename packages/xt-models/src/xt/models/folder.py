"""The HF config of a checkpoint folder, read with the names of the weights beside it.

A folder's ``config.json`` does not always say everything the weights do (DeepSeek-V3's MTP
depths: :mod:`xt.models.deepseek_v3.mtp_depth`), so every load of a folder (``from_pretrained``,
XT weights, ``model.init_from``'s config, plan and layout checks) reads its config through
:func:`read_folder_config`: ``config.json``, then the family's ``ModelSpec.folder_config`` hook with
the folder's weight names. Only names are read (the safetensors index or headers, the DCP metadata).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from xt.models.common.hf_config import read_config_json
from xt.models.common.safetensors_io import INDEX, SINGLE, CheckpointReader
from xt.models.registry import get_spec

__all__ = ["folder_weight_names", "read_folder_config"]

XT_WEIGHTS = "model"  # the DCP sub-folder of an XT weights folder (xt.models.weights.WEIGHTS)


def folder_weight_names(path: str | Path) -> list[str]:
    """The weight names of folder `path`: safetensors keys (HF names) of ``model.safetensors`` or
    its index, else the keys of an XT-weights DCP folder ``model/`` (XT names), else ``[]``."""
    p = Path(path)
    if (p / INDEX).is_file() or (p / SINGLE).is_file():
        reader = CheckpointReader(p)
        try:
            return list(reader.keys())
        finally:
            reader.close()
    if (p / XT_WEIGHTS / ".metadata").is_file():
        from torch.distributed.checkpoint import FileSystemReader  # ~1 s to import: only for DCP folders
        return list(FileSystemReader(str(p / XT_WEIGHTS)).read_metadata().state_dict_metadata)
    return []


def read_folder_config(path: str | Path) -> dict[str, Any]:
    """The HF config dict of checkpoint folder `path` (module docstring).

    Raises:
        xt.models.ConfigError: no or an unreadable ``config.json``, or an unknown architecture.
        xt.core.errors.CheckpointError: what the family's hook finds wrong (e.g. MTP depths with
            and without weights).
    """
    p = Path(path)
    d = read_config_json(p)
    hook = get_spec(d).folder_config
    folder = p if p.is_dir() else p.parent
    return hook(d, folder_weight_names(folder), str(folder)) if hook else d
