"""Named extra state in checkpoints: any number of `Stateful` objects saved and restored with the
rest of the training state (an RL driver's counters, a KL controller, a replay position, ...).

Each rank saves the ``state_dict()`` of its own objects into its ``rank-R.pt`` (so rank-local
state works, and replicated state is simply saved once per rank), and ``meta.json`` lists the
names. The rules, checked before anything is written or loaded:

- every rank passes the same names (checked with one all-reduce when there are several ranks);
  otherwise `CheckpointError` on every rank;
- a state must survive ``torch.load(weights_only=True)``: python primitives, lists, tuples,
  dicts and tensors; anything else is a `CheckpointError` at save time, naming the state;
- loading with a name the checkpoint lacks is a `CheckpointError` (the object would silently
  keep its fresh state, and a resume would not continue the run); a checkpoint holding a name
  the caller did not pass loads with a `CheckpointWarning` (the caller restores what it asked
  for; nothing of its live objects goes unrestored).
"""
from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from xt.core.distributed import DistContext
from xt.core.errors import CheckpointError, CheckpointWarning

__all__ = ["Stateful", "check_extra_state", "check_same_names_on_ranks", "encode_rank_state",
           "match_saved_names"]


@runtime_checkable
class Stateful(Protocol):
    """Anything with ``state_dict() -> dict`` and ``load_state_dict(dict)`` such that an object
    restored from a state behaves as the object the state was taken from."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


def check_extra_state(extra: Mapping[str, Any] | None) -> dict[str, Stateful]:
    """Validate the named extra states a caller passes; returns them sorted by name.

    Raises:
        TypeError: `extra` is not a mapping, a name is not a non-empty str, or an object lacks a
            callable ``state_dict`` / ``load_state_dict`` (the message names it).
    """
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise TypeError(f"extra_state must be a mapping of name to Stateful, got {type(extra).__name__}")
    for name, obj in extra.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"extra_state names must be non-empty strings, got {name!r}")
        for attr in ("state_dict", "load_state_dict"):
            if not callable(getattr(obj, attr, None)):
                raise TypeError(f"extra_state[{name!r}] ({type(obj).__name__}) has no {attr}(); "
                                "a named extra state needs state_dict() and load_state_dict()")
    return {name: extra[name] for name in sorted(extra)}


def check_same_names_on_ranks(names: Sequence[str], dist_ctx: DistContext, device: torch.device,
                              action: str) -> None:
    """Check that every rank passed the same extra-state names (collective; no-op on one rank).

    Each rank puts a 56-bit hash of its sorted names into its slot of a ``[world_size]`` int64
    vector; after the sum every rank sees every rank's hash and takes the same decision.

    Raises:
        xt.core.errors.CheckpointError: on every rank, naming the ranks whose names differ from
            rank 0's.
    """
    world = dist_ctx.world_size
    if world == 1 or not 0 <= dist_ctx.rank < world:  # rank must index the reduction group
        return
    digest = hashlib.sha256("\0".join(names).encode()).digest()
    slots = torch.zeros(world, dtype=torch.int64, device=device)
    slots[dist_ctx.rank] = int.from_bytes(digest[:7], "little")
    hashes = dist_ctx.all_reduce_sum(slots).tolist()
    differ = [r for r, h in enumerate(hashes) if h != hashes[0]]
    if differ:
        raise CheckpointError(f"{action}: the ranks pass different named extra states (ranks "
                              f"{differ} differ from rank 0; this rank {dist_ctx.rank} passes "
                              f"{list(names)}); every rank must pass the same names")


def encode_rank_state(payload: dict[str, Any], parts: Mapping[str, Any]) -> bytes:
    """``torch.save(payload)`` as bytes, checked to load back with ``weights_only=True``.

    Args:
        payload: the rank file's content.
        parts: the pieces to blame, by description (e.g. ``{"extra_state['rl']": state}``),
            tried one by one only when the whole payload fails to load.

    Raises:
        xt.core.errors.CheckpointError: the payload would not load at resume; names the part.
    """
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - turned into a user-facing error naming the culprit
        culprit, error = "the per-rank state", e
        for what, part in parts.items():
            one = io.BytesIO()
            torch.save(part, one)
            try:
                torch.load(io.BytesIO(one.getvalue()), map_location="cpu", weights_only=True)
            except Exception as part_error:  # noqa: BLE001
                culprit, error = what, part_error
                break
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{culprit} cannot be checkpointed: it would not load back with "
                              f"torch.load(weights_only=True) ({first_line}); keep a state to python "
                              "primitives, lists, tuples, dicts and tensors") from None
    return data


def match_saved_names(path: Path, saved: Sequence[str], wanted: Sequence[str]) -> None:
    """Compare the names a checkpoint holds with the ones the caller passes (module docstring).

    Raises:
        xt.core.errors.CheckpointError: a wanted name is not in the checkpoint.

    Warns:
        xt.core.errors.CheckpointWarning: the checkpoint holds names that are not wanted.
    """
    missing = sorted(set(wanted) - set(saved))
    if missing:
        raise CheckpointError(f"{path} has no extra state named {', '.join(map(repr, missing))} "
                              f"(it holds {sorted(saved) or 'none'}); it was saved by a run without "
                              "it. Resume with the same named states the run was saved with, or "
                              "start a fresh run (another train.out_dir)")
    unused = sorted(set(saved) - set(wanted))
    if unused:
        warnings.warn(f"{path} holds extra state {', '.join(map(repr, unused))} that this run does "
                      "not restore; it is ignored", CheckpointWarning, stacklevel=3)
