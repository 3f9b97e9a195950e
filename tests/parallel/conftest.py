"""Session-wide gloo pools (world 1, 2, 4), started on first use and shared by every dist test."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from parallel_harness import close_shared_pools, shared_pool  # noqa: E402


@pytest.fixture(scope="session")
def pools():
    """``pools(world) -> Pool``: one persistent process group per world size for the session
    (`parallel_harness.shared_pool`: the same pools serve tests/rl's SP cases)."""
    yield shared_pool
    close_shared_pools()
