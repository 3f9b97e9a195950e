"""This rank's loader under a layout: its data-parallel stream, cut to its sequence-parallel slice.

The loader itself comes from the caller (``xt.data.build_loader``, or any loader that follows the
loader contract of docs/contracts.md: an iterator of micro-batches with ``state_dict()`` /
``load_state_dict()``), so xt.parallel needs no xt.data.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

from xt.core.distributed import DistContext

__all__ = ["SequenceShardedLoader", "rank_loader"]


class SequenceShardedLoader:
    """Wraps a loader so each micro-batch is cut to this rank's Ulysses slice (`dist.shard_batch`).

    The state is the wrapped loader's: all SP ranks of one data-parallel group read the same
    micro-batches and keep only their slice.

    Attributes:
        loader: the wrapped loader (its ``summary()`` / ``skipped`` are read there).
        dist: the `ParallelDistContext` whose ``shard_batch`` cuts each batch.
    """

    def __init__(self, loader, dist) -> None:
        self.loader, self.dist = loader, dist

    def __iter__(self) -> Iterator[dict]:
        for batch in self.loader:
            yield self.dist.shard_batch(batch)

    def state_dict(self) -> dict:
        """The wrapped loader's state."""
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore the wrapped loader's state."""
        self.loader.load_state_dict(state)


def rank_loader(make_loader: Callable[..., Any], dist: DistContext) -> Any:
    """The loader of this rank: ``make_loader(dp_rank=R, dp_size=N)`` with `dist`'s data-parallel
    coordinates (0 and 1 without a layout), wrapped in :class:`SequenceShardedLoader` when `dist`
    splits sequences (``sp_size > 1``).

    Args:
        make_loader: builds the loader of one data-parallel rank, e.g.
            ``functools.partial(xt.data.build_loader, cfg.data)``.
        dist: the run's `DistContext` (from :func:`xt.parallel.layout.apply_layout`).
    """
    loader = make_loader(dp_rank=getattr(dist, "dp_rank", 0), dp_size=getattr(dist, "dp_size", 1))
    if getattr(dist, "sp_size", 1) > 1:
        return SequenceShardedLoader(loader, dist)
    return loader
