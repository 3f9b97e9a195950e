"""The all-to-all dispatcher alone (EP over the whole world) against local dispatch with all experts:
outputs, input gradients and expert-weight gradients, including ranks that send no tokens, all tokens
on one expert, experts and whole ranks that receive nothing, and capacity dropping."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parallel_cases import reference_dispatch

pytestmark = pytest.mark.dist


@st.composite
def specs(draw, world: int):
    E = world * draw(st.sampled_from([1, 2, 3]))
    return dict(fn="parallel_cases:run_dispatch", seed=draw(st.integers(0, 10**6)), num_experts=E, hidden=8,
                top_k=draw(st.integers(1, min(E, 3))), tokens=[draw(st.integers(0, 9)) for _ in range(world)],
                skew=draw(st.sampled_from(["none", "one_expert"])),
                capacity_factor=draw(st.sampled_from([None, None, 0.5, 1.0])))


@pytest.mark.parametrize("world,examples", [(2, 15), (4, 15)])
def test_all_to_all_dispatch_matches_local(pools, world, examples):
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(spec=specs(world))
    def prop(spec):
        got = pools(world).run(spec)
        ref = reference_dispatch(spec, world)
        for r in range(world):
            torch.testing.assert_close(got["y"][r], ref["y"][r], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got["x_grad"][r], ref["x_grad"][r], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["w_grad"], ref["w_grad"], rtol=1e-5, atol=1e-5)
        if spec["capacity_factor"] is None:
            assert got["dropped"] == [0] * world
    prop()


def test_zero_tokens_everywhere_and_one_expert(pools):
    """Rank 0 sends nothing; every token of rank 1 goes to expert 0 (rank 0's)."""
    spec = dict(fn="parallel_cases:run_dispatch", seed=3, num_experts=4, hidden=8, top_k=1, tokens=[0, 7],
                skew="one_expert", capacity_factor=None)
    got = pools(2).run(spec)
    ref = reference_dispatch(spec, 2)
    assert got["y"][0].shape == (0, 8)
    torch.testing.assert_close(got["y"][1], ref["y"][1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["w_grad"], ref["w_grad"], rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(got["w_grad"][1:]) == 0  # experts that got nothing: exactly zero gradient
