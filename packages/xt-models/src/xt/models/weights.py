"""Checkpoint folders that hold weights only, and the model part of an XT training checkpoint.

Two weights-only formats, both with the HF ``config.json`` next to the weights:

* an HF folder: ``config.json`` + safetensors with transformers' key names (single file or
  sharded), read and written by :mod:`xt.models.hf_io`;
* XT weights: ``config.json`` + a torch distributed checkpoint (DCP) folder ``model/`` with XT's
  own state-dict keys, written by ``xt convert HF XT`` (:func:`save_xt_weights`). DCP loads into
  any layout, so a large model loads sharded in parallel.

:func:`is_hf_folder` / :func:`is_xt_weights` tell them apart and :func:`load_weights` loads
either; ``model.init_from`` (:func:`xt.models.section.build_run_model`) and ``xt convert`` both go
through here.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from xt.models.folder import XT_WEIGHTS, read_folder_config
from xt.models.hf_io import from_pretrained
from xt.models.registry import build_model

__all__ = ["WEIGHTS", "is_hf_folder", "is_xt_weights", "load_weights", "load_xt_weights",
           "save_xt_weights", "load_training_checkpoint", "dcp_load_model", "dcp_save_model"]

WEIGHTS = XT_WEIGHTS  # the DCP sub-folder of an XT weights-only folder


def is_hf_folder(path: str | Path) -> bool:
    """True for a folder with ``config.json`` and safetensors weights (single or sharded)."""
    p = Path(path)
    return (p / "config.json").is_file() and any(p.glob("*.safetensors"))


def is_xt_weights(path: str | Path) -> bool:
    """True for a weights-only XT folder written by ``xt convert HF XT``."""
    p = Path(path)
    return (p / "config.json").is_file() and (p / WEIGHTS / ".metadata").is_file()


def dcp_load_model(model: nn.Module, checkpoint_id: Path, key: str | None) -> None:
    """Load `model`'s state dict in place from the DCP folder `checkpoint_id` (under `key` if given:
    ``"model"`` in a full XT training checkpoint). Works without a process group.

    Raises:
        RuntimeError / ValueError (from DCP): missing keys or shapes that do not match.
    """
    import torch.distributed.checkpoint as dcp  # ~1 s to import: only when a DCP folder is read
    sd = model.state_dict()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.load({key: sd} if key else sd, checkpoint_id=str(checkpoint_id))
    model.load_state_dict(sd)


def dcp_save_model(model: nn.Module, checkpoint_id: Path) -> None:
    """Write `model`'s state dict as a DCP folder `checkpoint_id` (no process group needed)."""
    import torch.distributed.checkpoint as dcp
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.save(model.state_dict(), checkpoint_id=str(checkpoint_id))


def load_xt_weights(path: str | Path, device=None, attn_backend: str = "auto"):
    """Build the model of a weights-only XT folder and load its weights (DCP, any layout).

    Raises:
        xt.models.ConfigError: bad ``config.json``; RuntimeError (DCP): weights that do not fit.
    """
    p = Path(path)
    model = build_model(read_folder_config(p), device=device, attn_backend=attn_backend)
    dcp_load_model(model, p / WEIGHTS, None)
    return model


def load_weights(path: str | Path, *, device: str | torch.device | None = None,
                 attn_backend: str = "auto") -> nn.Module:
    """The model of a weights-only folder (on `device`, default CPU; parameters in the
    checkpoint's dtype): XT weights when :func:`is_xt_weights`, otherwise read as an HF folder
    (:func:`xt.models.from_pretrained`, whose errors say what is missing).

    Raises:
        xt.models.ConfigError: no or a bad ``config.json``.
        FileNotFoundError: an HF folder without safetensors.
        xt.core.errors.CheckpointError / RuntimeError: weights that do not fit the config (HF keys
            named / DCP's message).
    """
    if is_xt_weights(path):
        return load_xt_weights(path, device=device, attn_backend=attn_backend)
    return from_pretrained(path, device=device, attn_backend=attn_backend)


def save_xt_weights(model: nn.Module, path: str | Path) -> None:
    """Write `model` as a weights-only XT folder: ``config.json`` (its HF fields) and ``model/``
    (DCP). `path` is created and must not hold an older ``model/``.

    Raises:
        ValueError: the model has no typed config with ``to_hf_dict()``.
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_hf_dict"):
        raise ValueError(f"{type(model).__name__} has no typed config with to_hf_dict(); cannot save")
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    dcp_save_model(model, p / WEIGHTS)
    (p / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2, sort_keys=True) + "\n")


def load_training_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load the model weights of a complete XT training checkpoint ``checkpoints/step-N`` into
    `model` in place (any layout it was saved from; the optimizer state is not read).

    Raises:
        RuntimeError / ValueError (from DCP): the checkpoint's tensors do not fit `model`.
    """
    from xt.core.checkpoint.io import MODEL_OPTIM
    dcp_load_model(model, Path(path) / MODEL_OPTIM, "model")
