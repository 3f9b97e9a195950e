"""Save and restore the full training state, atomically (see `xt.core.checkpoint.layout`).

Model and optimizer go through torch.distributed.checkpoint (DCP) with
`torch.distributed.checkpoint.state_dict.get_state_dict / set_state_dict`, so the same code saves
a plain single-process model and an FSDP2-sharded one (each rank writes its shards). DCP runs
without a process group in one process. Non-tensor state is written with `torch.save` (loaded
with ``weights_only=True``): the step and LR-scheduler state by the main rank, the loader state,
RNG states and named extra states (`xt.core.checkpoint.extra`) by every rank. The loader's and
the extra states' `state_dict()` must therefore hold only python primitives, lists/tuples/dicts
and tensors (checked when saving).
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from xt.core.checkpoint.extra import (Stateful, check_extra_state, check_same_names_on_ranks,
                                      encode_rank_state, match_saved_names)
from xt.core.checkpoint.layout import (CHECKPOINTS, META, checkpoint_dir, is_complete,
                                       prune_checkpoints)
from xt.core.checkpoint.rng import get_rng_state, set_rng_state
from xt.core.distributed import DistContext, LocalDistContext
from xt.core.errors import CheckpointError

__all__ = ["save_checkpoint", "load_checkpoint", "check_model_fits", "read_saved_extra_state", "saved_world_size"]

MODEL_OPTIM = "model_optim"
TRAINER = "trainer.pt"


@contextlib.contextmanager
def _quiet_single_process():
    """Hide DCP's 'assuming ... single process' warning when no process group exists."""
    with warnings.catch_warnings():
        if not (dist.is_available() and dist.is_initialized()):
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        yield


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_trainer_state(tmp: Path, step: int, scheduler: Any) -> None:
    state = None if scheduler is None else scheduler.state_dict()
    torch.save({"step": step, "scheduler": state}, tmp / TRAINER)


def _write_rank_state(tmp: Path, rank: int, loader: Any, extra: Mapping[str, Stateful]) -> None:
    extra_sd = {name: obj.state_dict() for name, obj in extra.items()}
    payload = {"loader": loader.state_dict(), "rng": get_rng_state(), "extra": extra_sd}
    parts = {"the loader state": payload["loader"],
             **{f"extra_state[{name!r}]": sd for name, sd in extra_sd.items()}}
    (tmp / f"rank-{rank}.pt").write_bytes(encode_rank_state(payload, parts))


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _publish(tmp: Path, final: Path, meta: dict[str, Any]) -> None:
    """Write meta.json (the completeness marker) and rename `tmp` to `final` atomically."""
    meta_path = tmp / META
    with open(meta_path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    old = final.with_name(final.name + ".old")
    if final.exists():  # re-saving the same step: move the previous copy aside first
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(out_dir: str | Path, step: int, model: nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, loader: Any,
                    dist_ctx: DistContext | None = None, keep_last: int = 0, *,
                    extra_state: Mapping[str, Stateful] | None = None) -> Path:
    """Save the training state after optimizer step `step` to ``out_dir/checkpoints/step-{step}``.

    Everything is written into ``step-{step}.tmp``; the main rank then writes ``meta.json`` and
    renames the folder, so an interrupted save never looks complete and the previous checkpoint
    stays the latest. Must be called on every rank (collective).

    Args:
        out_dir: run folder.
        step: optimizer steps completed.
        model, optimizer: saved with DCP (sharded models save their shards).
        scheduler: anything with `state_dict()` (the LR scheduler), saved by the main rank; None
            saves none (e.g. when it travels inside an `Engine` passed in `extra_state`).
        loader: the data loader (`state_dict()`), saved per rank.
        dist_ctx: the layout (default single process).
        keep_last: prune to the newest `keep_last` complete checkpoints afterwards (0 = keep all).
        extra_state: named `Stateful` objects (``state_dict()`` / ``load_state_dict()``), each
            rank saving its own (`xt.core.checkpoint.extra`); the names go to ``meta.json``.

    Returns:
        The final checkpoint folder.

    Raises:
        TypeError: a bad `extra_state` entry (not a Stateful, or a name that is not a str).
        xt.core.errors.CheckpointError: the ranks pass different extra-state names, or a loader
            or extra state would not load back with ``weights_only=True``; the folder is not
            published then (the previous checkpoint stays the latest).
    """
    dist_ctx = dist_ctx or LocalDistContext()
    extra = check_extra_state(extra_state)
    check_same_names_on_ranks(list(extra), dist_ctx, _device(model), f"saving step {step}")
    final = checkpoint_dir(out_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if dist_ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist_ctx.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _quiet_single_process():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / MODEL_OPTIM))
    _write_rank_state(tmp, dist_ctx.rank, loader, extra)
    if dist_ctx.is_main:
        _write_trainer_state(tmp, step, scheduler)
    dist_ctx.barrier()
    if dist_ctx.is_main:
        _publish(tmp, final, {"step": step, "world_size": dist_ctx.world_size,
                              "torch": torch.__version__, "time": time.time(),
                              "extra_state": list(extra)})
        prune_checkpoints(out_dir, keep_last)
    dist_ctx.barrier()
    return final


def check_model_fits(path: str | Path, model_sd: dict[str, Any]) -> None:
    """Check that the model tensors saved in checkpoint `path` have the names and (global) shapes
    of `model_sd` (the live model's state dict), before DCP loads anything.

    Raises:
        xt.core.errors.CheckpointError: a tensor missing on either side or of another shape; the
            message names up to three of them with both shapes.
    """
    reader = dcp.FileSystemReader(str(Path(path) / MODEL_OPTIM))
    try:
        saved = reader.read_metadata().state_dict_metadata
    except Exception as e:  # unreadable / foreign metadata: DCP's own error would be a traceback
        raise CheckpointError(f"{path}: cannot read the saved model ({type(e).__name__}: {e})") from None
    prefix = "model."
    saved_shapes = {k[len(prefix):]: tuple(getattr(v, "size", ()))
                    for k, v in saved.items() if k.startswith(prefix) and hasattr(v, "size")}
    live_shapes = {k: tuple(v.shape) for k, v in model_sd.items() if isinstance(v, torch.Tensor)}
    problems = [f"{k} is {list(saved_shapes[k])} in the checkpoint, {list(s)} in this model"
                for k, s in live_shapes.items() if k in saved_shapes and saved_shapes[k] != s]
    missing = sorted(set(live_shapes) - set(saved_shapes))
    unexpected = sorted(set(saved_shapes) - set(live_shapes))
    problems += [f"{k} is not in the checkpoint" for k in missing]
    problems += [f"{k} is in the checkpoint but not in this model" for k in unexpected]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(f"{path} holds a model of another shape than this run's "
                              f"[model] section: {'; '.join(problems[:3])}{more}. Resume with the "
                              f"config the checkpoint was trained with, or start a fresh run "
                              f"(another train.out_dir)")


def read_saved_extra_state(path: str | Path, name: str, rank: int = 0) -> Any:
    """The named extra state `name` as saved by `rank` in checkpoint `path` (loaded with
    ``weights_only=True``), e.g. to compare settings before anything is restored.

    Raises:
        xt.core.errors.CheckpointError: the checkpoint holds no extra state `name`.
    """
    state = torch.load(Path(path) / f"rank-{rank}.pt", map_location="cpu", weights_only=True)
    if name not in state.get("extra", {}):
        raise CheckpointError(f"{path} holds no extra state {name!r}")
    return state["extra"][name]


def saved_world_size(path: str | Path) -> int:
    """The number of ranks a complete checkpoint was saved on (its ``meta.json``)."""
    return int(json.loads((Path(path) / META).read_text(encoding="utf-8")).get("world_size", 1))


def _rank_state_for(path: Path, saved_world: int, dist_ctx: DistContext) -> dict[str, Any]:
    """The per-rank state (loader, RNG, extra states) this rank restores.

    Same world size: its own ``rank-R.pt``. Another world size: the loader and extra states must
    be the same on every saved rank (a global stream position such as `xt.data.PackedLoader`'s,
    replicated counters such as the engine's; keys a state lists under ``"per_rank_keys"`` are
    not compared), and then every rank takes them from rank 0 and
    the RNG state of saved rank ``R % saved_world``; the loader re-splits the stream over the new
    ranks itself. State that differs per rank cannot be re-split and is refused.
    """
    if saved_world == dist_ctx.world_size:
        return torch.load(path / f"rank-{dist_ctx.rank}.pt", map_location="cpu", weights_only=True)
    states = [torch.load(path / f"rank-{r}.pt", map_location="cpu", weights_only=True) for r in range(saved_world)]
    for part in ("loader", "extra"):
        differ = [r for r in range(1, saved_world) if not _same(_shared(states[r][part]), _shared(states[0][part]))]
        if differ:
            what = "loader position" if part == "loader" else "named extra state"
            raise CheckpointError(f"{path} was saved on {saved_world} ranks and its {what} differs between "
                                  f"rank 0 and rank {differ[0]}, so it cannot be re-split over "
                                  f"{dist_ctx.world_size} ranks; resume on {saved_world} ranks")
    return {**states[0], "rng": states[dist_ctx.rank % saved_world]["rng"]}


def _shared(state: Any) -> Any:
    """`state` without the keys it lists under ``"per_rank_keys"`` (informational per-rank values,
    such as the epoch of the last batch a rank drew, that may differ where the position does not)."""
    if isinstance(state, dict) and "per_rank_keys" in state:
        return {k: v for k, v in state.items() if k not in set(state["per_rank_keys"]) | {"per_rank_keys"}}
    return state


def _same(a: Any, b: Any) -> bool:
    """Equality of nested state (dicts, lists, tensors, python values)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape \
            and a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, loader: Any, dist_ctx: DistContext | None = None, *,
                    extra_state: Mapping[str, Stateful] | None = None) -> int:
    """Restore a state written by `save_checkpoint` into live objects; return its step.

    Restores model and optimizer (DCP, resharded to the current layout if needed), scheduler,
    this rank's loader state, the named extra states and, last, the RNG states. Call on every
    rank, after building the model, optimizer and scheduler exactly as for a fresh run.

    A checkpoint saved on another number of ranks loads when its loader and extra states are the
    same on every saved rank (a global stream position, replicated counters): every rank takes
    rank 0's and the RNG state of saved rank ``rank % saved_world_size``; DCP reshards the model
    and optimizer (`_rank_state_for`).

    Args:
        path: a complete ``step-N`` folder.
        model, optimizer, loader, dist_ctx: as for `save_checkpoint`.
        scheduler: restored from the main rank's state, or None to restore none.
        extra_state: named `Stateful` objects to restore (the same names on every rank).

    Raises:
        TypeError: a bad `extra_state` entry.
        xt.core.errors.CheckpointError: (a ValueError) if `path` is not a complete checkpoint, it
            was saved on a different number of ranks with loader or extra states that differ
            between them, its
            model tensors do not fit `model` (names or shapes differ: another model config),
            it lacks a named extra state in `extra_state` or the scheduler state asked for, or
            the ranks pass different names; nothing is loaded then.

    Warns:
        xt.core.errors.CheckpointWarning: the checkpoint holds extra states not in `extra_state`
            (they are not loaded).
    """
    dist_ctx = dist_ctx or LocalDistContext()
    extra = check_extra_state(extra_state)
    path = Path(path)
    if not is_complete(path):
        raise CheckpointError(f"{path} is not a complete checkpoint (no {META}, or not named step-N "
                              f"under {CHECKPOINTS}/)")
    meta = json.loads((path / META).read_text(encoding="utf-8"))
    rank_state = _rank_state_for(path, int(meta.get("world_size", 1)), dist_ctx)
    check_same_names_on_ranks(list(extra), dist_ctx, _device(model), f"loading {path}")
    match_saved_names(path, meta.get("extra_state", []), list(extra))
    trainer = torch.load(path / TRAINER, map_location="cpu", weights_only=True)
    if scheduler is not None and trainer.get("scheduler") is None:
        raise CheckpointError(f"{path} holds no LR-scheduler state (it was saved with the "
                              "scheduler inside a named extra state, e.g. by Trainer's 'engine'); "
                              "pass scheduler=None and that extra state instead")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    check_model_fits(path, model_sd)
    with _quiet_single_process():
        dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path / MODEL_OPTIM))
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
    if scheduler is not None:
        scheduler.load_state_dict(trainer["scheduler"])
    loader.load_state_dict(rank_state["loader"])
    for name, obj in extra.items():
        obj.load_state_dict(rank_state["extra"][name])
    set_rng_state(rank_state["rng"])  # last: restoring the objects above must not move it
    return int(trainer["step"])
