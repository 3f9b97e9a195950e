"""Materialise a model built (and laid out) on the meta device: allocate and initialise only this rank's shards.

The flow for a model too large for one process (docs/architecture.md, Meta-device construction):

1. build it under ``torch.device("meta")`` (no memory; ``xt.models.build_model(..., device="meta")``);
2. lay it out there (:func:`xt.parallel.parallelize`: expert slicing, FSDP2 ``fully_shard``; both
   work on meta tensors);
3. :func:`materialize_`: ``to_empty`` allocates each rank's local shards only, then every shard is
   filled with its rows of the full tensor (:func:`xt.core.seeded_init.init_rows`, from the model's
   ``init_rules()`` and ``xt_init_seed``). A rank never holds more than its shards plus one
   initialisation chunk.

Because every sharding XT applies cuts dim 0 into contiguous row ranges (FSDP2 ``Shard(0)``, the
expert slice of EP, both together, HSDP's replicas), the rows a rank owns are read off the
DTensor's placements (``compute_local_shape_and_global_offset``) and the assembled tensor equals
what one process initialises with the same seed, bit for bit.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from xt.core.errors import CheckpointError
from xt.core.seeded_init import InitRule, init_rows_
from xt.parallel.names import persistent_buffer_names, plain_name

__all__ = ["is_meta_model", "owned_rows", "materialize_"]


def is_meta_model(model: nn.Module) -> bool:
    """True when any parameter or buffer of `model` (a DTensor's local shard included) is on meta."""
    def meta(t: torch.Tensor) -> bool:
        return (t.to_local() if isinstance(t, DTensor) else t).is_meta
    return any(meta(t) for t in list(model.parameters()) + list(model.buffers()))


def owned_rows(t: torch.Tensor) -> tuple[int, int]:
    """The rows ``[start, stop)`` of dim 0 of `t`'s global tensor that this rank holds.

    A plain tensor holds all of them; a DTensor its local shard's, from its mesh and placements.

    Raises:
        NotImplementedError: a DTensor sharded along another dim than 0 (XT never does this).
    """
    if not isinstance(t, DTensor):
        return 0, (t.shape[0] if t.dim() else 1)
    shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    if t.dim() == 0:
        return 0, 1
    if any(offset[1:]) or tuple(shape[1:]) != tuple(t.shape[1:]):
        raise NotImplementedError(f"a shard of global shape {tuple(t.shape)} at offset {offset} with local shape "
                                  f"{tuple(shape)} is not a range of dim-0 rows ({t.placements})")
    return offset[0], offset[0] + shape[0]


def _tied_groups(model: nn.Module) -> list[list[str]]:
    by_id: dict[int, list[str]] = defaultdict(list)
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id[id(p)].append(name)
    return [names for names in by_id.values() if len(names) > 1]


def _retie(model: nn.Module, groups: list[list[str]]) -> None:
    for first, *rest in groups:
        p = model.get_parameter(first)
        for name in rest:
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner) if owner else model, attr, p)


@torch.no_grad()
def materialize_(model: nn.Module, device: torch.device | str, *, rules: dict[str, InitRule] | None = None,
                 base_seed: int | None = None,
                 read: Callable[[str, int, int], torch.Tensor] | None = None) -> nn.Module:
    """Allocate `model`'s (meta) parameters and buffers on `device`, this rank's shards only, and
    initialise them as one process would the full model, or load them.

    Args:
        model: built on meta and optionally laid out (:func:`xt.parallel.parallelize`); an XT model
            (``init_rules()`` and ``xt_init_seed``) unless `rules` and `base_seed` are given.
        device: where the shards go (``cuda:LOCAL_RANK`` or the CPU).
        rules: ``{qualified name: InitRule}`` for every parameter and buffer (default
            ``model.init_rules()``).
        base_seed: the run's base seed (default ``model.xt_init_seed``, drawn at construction).
        read: ``read(name, start, stop) -> rows [start, stop) of parameter name`` (e.g.
            ``xt.models.hf_rows.hf_row_reader``; `name` as the plain model's ``state_dict()`` spells
            it, without wrapper prefixes): parameters and persistent buffers are loaded from it
            instead, each rank reading only its rows (a sharded checkpoint load), and cast to the
            model's dtype; non-persistent buffers are still initialised.

    Returns:
        `model`, in place; tied parameters stay tied.

    Raises:
        ValueError: no rules / seed given and the model has none, or a parameter or buffer without
            a rule (it would keep uninitialised memory).
        xt.core.errors.CheckpointError: `read` gives rows of another shape than the shard's.
    """
    if read is not None:
        return _load_(model, device, read)
    if rules is None or base_seed is None:
        if not hasattr(model, "init_rules") or not hasattr(model, "xt_init_seed"):
            raise ValueError(f"{type(model).__name__} has no init_rules()/xt_init_seed, so it cannot be "
                             "initialised after a meta-device build; build it on a real device instead")
        rules = model.init_rules() if rules is None else rules
        base_seed = model.xt_init_seed if base_seed is None else base_seed
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    missing = sorted(n for n in tensors if n not in rules)
    if missing:
        raise ValueError(f"no init rule for {missing[:3]}{' ...' if len(missing) > 3 else ''} of "
                         f"{type(model).__name__}: they would keep uninitialised memory")
    for name, t, local, start, _ in _allocated_shards(model, device):
        init_rows_(local, rules[name], name, tuple(t.shape), start, base_seed)
    return model


def _allocated_shards(model: nn.Module, device: torch.device | str):
    """Allocate `model`'s shards on `device` (``to_empty``, ties restored), then yield ``(name, tensor,
    local shard, start, stop)`` for every parameter and buffer (rows ``[start, stop)`` of dim 0)."""
    groups = _tied_groups(model)
    model.to_empty(device=device)
    _retie(model, groups)
    for name, t in (dict(model.named_parameters()) | dict(model.named_buffers())).items():
        local = t.to_local() if isinstance(t, DTensor) else t
        start, stop = owned_rows(t)
        if local.shape[:1] != (stop - start,) and local.dim():
            raise NotImplementedError(f"{name}: local shard {tuple(local.shape)} is not rows [{start}, {stop})")
        yield name, t, local, start, stop


def _load_(model: nn.Module, device: torch.device | str, read: Callable[[str, int, int], torch.Tensor]) -> nn.Module:
    """`materialize_` with `read`: every parameter and persistent buffer is read (its rows only),
    the non-persistent buffers (e.g. RoPE tables) initialised by the model's rules."""
    persistent = persistent_buffer_names(model)
    rest = {n for n, _ in model.named_buffers() if n not in persistent}
    rules = model.init_rules() if rest else {}
    seed = getattr(model, "xt_init_seed", 0)
    missing = sorted(n for n in rest if n not in rules)
    if missing:
        raise ValueError(f"no init rule for the buffers {missing[:3]} of {type(model).__name__}")
    for name, t, local, start, stop in _allocated_shards(model, device):
        if name in rest:
            init_rows_(local, rules[name], name, tuple(t.shape), start, seed)
            continue
        rows = read(plain_name(name), start, stop)
        if tuple(rows.shape) != tuple(local.shape):
            raise CheckpointError(f"{plain_name(name)}: the checkpoint gives rows of shape {tuple(rows.shape)}, "
                                  f"the model's shard is {tuple(local.shape)}")
        local.copy_(rows)
    return model
