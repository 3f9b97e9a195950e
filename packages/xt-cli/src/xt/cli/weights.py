"""Checkpoint folders that hold weights only: HF folders (``config.json`` + safetensors) and XT
weights-only folders (``config.json`` + a torch DCP folder ``model/``).

Detection and loading live here so that both run composition (:mod:`xt.cli.build`, which loads
``model.init_from``) and ``xt convert`` (:mod:`xt.cli.convert`, which writes them) use them
without importing each other.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch.distributed.checkpoint as dcp
from torch import nn

from xt.models import build_model

__all__ = ["WEIGHTS", "is_hf_folder", "is_xt_weights", "load_xt_weights", "dcp_load_model", "dcp_save_model"]

WEIGHTS = "model"  # the DCP sub-folder of an XT weights-only folder


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
    sd = model.state_dict()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.load({key: sd} if key else sd, checkpoint_id=str(checkpoint_id))
    model.load_state_dict(sd)


def dcp_save_model(model: nn.Module, checkpoint_id: Path) -> None:
    """Write `model`'s state dict as a DCP folder `checkpoint_id` (no process group needed)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.save(model.state_dict(), checkpoint_id=str(checkpoint_id))


def load_xt_weights(path: str | Path, device=None, attn_backend: str = "auto"):
    """Build the model of a weights-only XT folder and load its weights (DCP, any layout).

    Raises:
        xt.models.ConfigError: bad ``config.json``; RuntimeError (DCP): weights that do not fit.
    """
    p = Path(path)
    model = build_model(p / "config.json", device=device, attn_backend=attn_backend)
    dcp_load_model(model, p / WEIGHTS, None)
    return model
