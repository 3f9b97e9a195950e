"""Checkpoints: atomic save/restore of the full training state, discovery, resume, pruning.

Public API:
    save_checkpoint(out_dir, step, model, optimizer, scheduler, loader, dist_ctx=None, keep_last=0,
                    *, extra_state=None) -> Path
    load_checkpoint(path, model, optimizer, scheduler, loader, dist_ctx=None, *, extra_state=None) -> step
    Stateful                                         state_dict() / load_state_dict(); extra_state
                                                     is {name: Stateful} (xt.core.checkpoint.extra)
    check_model_fits(path, model_state_dict)         tensor names/shapes match, else CheckpointError
    read_saved_extra_state(path, name, rank=0), saved_world_size(path)   look before loading
    latest_checkpoint(out_dir) -> Path | None;  list_checkpoints(out_dir) -> [(step, Path)]
    resolve_resume(resume, out_dir) -> Path | None   ("auto", a path, or None)
    prune_checkpoints(out_dir, keep_last) -> [Path]
    seed_everything(seed), get_rng_state(), set_rng_state(state)

Unusable checkpoints raise `xt.core.errors.CheckpointError` (an `XTError` and a `ValueError`);
extra state in a checkpoint that the caller does not restore gives a `CheckpointWarning`.
"""
from xt.core.checkpoint.extra import Stateful
from xt.core.checkpoint.io import (check_model_fits, load_checkpoint, read_saved_extra_state, save_checkpoint,
                                   saved_world_size)
from xt.core.checkpoint.layout import (checkpoint_dir, is_complete, latest_checkpoint,
                                       list_checkpoints, prune_checkpoints, resolve_resume)
from xt.core.checkpoint.rng import get_rng_state, seed_everything, set_rng_state

__all__ = [
    "Stateful", "check_model_fits", "checkpoint_dir", "get_rng_state", "is_complete", "latest_checkpoint", "list_checkpoints",
    "load_checkpoint", "prune_checkpoints", "read_saved_extra_state", "saved_world_size", "resolve_resume", "save_checkpoint",
    "seed_everything", "set_rng_state",
]
