"""The run-assembly helpers of xt.parallel on their own: `check_layout` reads the launch from the
environment and the sizes from a model config; `rank_loader` gives each rank its data-parallel
stream and, under SP, its slice with the wrapped loader's state."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from xt.parallel import LayoutError, ParallelConfig, SequenceShardedLoader, check_layout, rank_loader

MOE = SimpleNamespace(num_experts=4, num_attention_heads=4, num_key_value_heads=2)


def test_check_layout_uses_the_launch_and_the_model_sizes(monkeypatch):
    for k in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    check_layout(ParallelConfig(), MOE)
    with pytest.raises(LayoutError, match=r"parallel\.ep_size = 2 .*single process"):
        check_layout(ParallelConfig(ep_size=2), MOE)
    monkeypatch.setenv("WORLD_SIZE", "4")
    check_layout(ParallelConfig(ep_size=2), MOE)
    with pytest.raises(LayoutError, match="num_experts"):
        check_layout(ParallelConfig(ep_size=4), SimpleNamespace(n_routed_experts=6, num_attention_heads=4))


class _Loader:
    """A contract loader of integers: state is the next one."""

    def __init__(self, dp_rank: int, dp_size: int) -> None:
        self.next, self.step = dp_rank, dp_size

    def __iter__(self):
        while True:
            i, self.next = self.next, self.next + self.step
            yield {"i": i}

    def state_dict(self) -> dict:
        return {"next": self.next}

    def load_state_dict(self, state: dict) -> None:
        self.next = state["next"]


def test_rank_loader_streams_and_slices():
    plain = rank_loader(_Loader, SimpleNamespace())
    assert isinstance(plain, _Loader) and (plain.next, plain.step) == (0, 1)
    dist = SimpleNamespace(dp_rank=1, dp_size=2, sp_size=2, shard_batch=lambda b: {**b, "sliced": True})
    sp = rank_loader(_Loader, dist)
    assert isinstance(sp, SequenceShardedLoader) and sp.loader.step == 2
    it = iter(sp)
    assert [next(it) for _ in range(2)] == [{"i": 1, "sliced": True}, {"i": 3, "sliced": True}]
    state = sp.state_dict()
    again = rank_loader(_Loader, dist)
    again.load_state_dict(state)
    assert next(iter(again)) == {"i": 5, "sliced": True}
