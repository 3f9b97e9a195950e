"""Which rows of every parameter a rank holds under a layout, computed from shapes alone.

The same arithmetic FSDP2 and :func:`xt.parallel.fsdp.shard_experts_` apply, without a process
group: ``xt plan`` uses it for per-GPU memory, and ``tests/parallel/test_parallel_fake_scale.py``
checks it against the DTensor shards `parallelize` really makes (torch's fake process group).

Rank ``r`` of ``world = hsdp_replicate x fsdp_size`` (:mod:`xt.parallel.mesh`): ``dp_shard =
r % fsdp_size``; expert parallelism lies inside the FSDP group, ``ep = r % ep_size`` and
``edp_shard = (r // ep_size) % (fsdp_size // ep_size)``. FSDP2 cuts dim 0 into ``ceil(rows / n)``
row chunks (the last ones short or empty); an expert weight ``[E, ...]`` keeps ``E / ep_size``
experts, which FSDP2 then cuts over ``edp_shard``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from xt.parallel.config import ParallelConfig

__all__ = ["RankCoords", "rank_coords", "chunk_rows", "local_shapes"]


@dataclass(frozen=True)
class RankCoords:
    """Mesh coordinates of one rank: ``dp_shard`` in ``[0, fsdp)``, ``ep`` in ``[0, ep_size)``,
    ``edp_shard`` in ``[0, fsdp // ep_size)``, ``replica`` in ``[0, hsdp_replicate)``."""

    dp_shard: int
    ep: int
    edp_shard: int
    replica: int


def rank_coords(cfg: ParallelConfig, world: int, rank: int) -> RankCoords:
    """Coordinates of `rank` in the meshes of `cfg` at `world` ranks (`xt.parallel.mesh` order).

    Raises:
        ValueError: `rank` outside ``[0, world)``.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside [0, {world})")
    fsdp = cfg.resolved_fsdp_size(world)
    return RankCoords(rank % fsdp, rank % cfg.ep_size, (rank // cfg.ep_size) % (fsdp // cfg.ep_size), rank // fsdp)


def chunk_rows(rows: int, parts: int, index: int) -> int:
    """Rows of chunk `index` when `rows` are cut into `parts` chunks of ``ceil(rows / parts)``
    (FSDP2's ``Shard(0)``: trailing chunks may be shorter or empty)."""
    size = math.ceil(rows / parts) if rows else 0
    return max(0, min(size, rows - index * size))


def local_shapes(shapes: Mapping[str, tuple[int, ...]], expert_names: Iterable[str], cfg: ParallelConfig,
                 world: int, rank: int, *, fsdp: bool = True) -> dict[str, tuple[int, ...]]:
    """The local shard shape of every parameter on `rank`.

    Args:
        shapes: global shape of each parameter, by name (e.g. a meta model's ``named_parameters``).
        expert_names: the stacked expert weights (dim 0 = E) that EP slices.
        cfg, world, rank: the layout and the rank.
        fsdp: False for a model without FSDP2 (one plain process): every tensor whole.

    Returns:
        ``{name: local shape}``; a 0-d tensor stays ``()``.
    """
    experts = set(expert_names)
    c = rank_coords(cfg, world, rank)
    fsdp_size = cfg.resolved_fsdp_size(world)
    out = {}
    for name, shape in shapes.items():
        shape = tuple(shape)
        if not shape or not fsdp:
            out[name] = shape
            continue
        if name in experts and cfg.ep_size > 1:
            rows = chunk_rows(shape[0] // cfg.ep_size, fsdp_size // cfg.ep_size, c.edp_shard)
        else:
            rows = chunk_rows(shape[0], fsdp_size, c.dp_shard)
        out[name] = (rows, *shape[1:])
    return out
