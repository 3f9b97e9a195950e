"""Session-wide gloo pools (world 1, 2, 4), started on first use and shared by every dist test."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from parallel_harness import Pool  # noqa: E402

_POOLS: dict[int, Pool] = {}


@pytest.fixture(scope="session")
def pools():
    """``pools(world) -> Pool``: one persistent process group per world size for the session."""
    def get(world: int) -> Pool:
        if world not in _POOLS:
            _POOLS[world] = Pool(world)
        return _POOLS[world]
    yield get
    for p in _POOLS.values():
        p.close()
    _POOLS.clear()
