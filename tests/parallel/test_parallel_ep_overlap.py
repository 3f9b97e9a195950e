"""``parallel.ep_overlap`` (xt.parallel.ep_overlap) against the plain all-to-all dispatcher (gloo).

The overlapped dispatcher cuts each MoE layer's tokens in two chunks whose all-to-alls run while the
other chunk's experts compute. Each token row meets the same expert weights, so the first step's
losses agree bit for bit (asserted); the gradients are sums in another order (the expert weight gradients add
two chunks' GEMMs, a token's input gradient adds its expert paths in another order), measured at
<= 4e-7 relative in fp32, so every gradient and every parameter after two SGD steps is held to
1e-6 (``errors`` of tests/parallel/parallel_layouts.py), and so is the second step's loss.
"""
from __future__ import annotations

import pytest

from parallel_layouts import errors

pytestmark = pytest.mark.dist

TOL_OVERLAP = 1e-6
MODEL = dict(vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=4, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=8)


def _spec(layout: dict, skew: str, docs, ac: float = 0.0) -> dict:
    return dict(fn="parallel_cases:run_toy", model=MODEL, seed=3, skew=skew, docs=docs, lr=1e-2, max_norm=0.5,
                optim="sgd", layout=dict(layout, activation_checkpointing=ac, param_dtype=None, reduce_dtype=None))


def _compare(pool, layout: dict, skew: str, docs, ac: float = 0.0) -> None:
    off = pool.run(_spec(layout, skew, docs, ac))
    on = pool.run(_spec(dict(layout, ep_overlap=True), skew, docs, ac))
    assert on["loss"][0] == off["loss"][0], (on["loss"], off["loss"])  # same weights: same forward
    errs = errors(on, off)
    bad = [f"{k}: {d}" for k, (e, d) in errs.items() if e > TOL_OVERLAP]
    assert not bad, f"{layout} {skew}:\n" + "\n".join(bad[:20])
    assert on["dispatchers"] == ["OverlappedAllToAllDispatcher"] and off["dispatchers"] == ["AllToAllDispatcher"]


@pytest.mark.parametrize("skew,docs,ac", [
    ("none", [[[5, 3], [1]], [[4], [6, 2]]], 0.0),  # rank 1's first step: one token, an empty chunk 0
    ("one_expert", [[[7], [2, 5]], [[3, 3], [9]]], 1.0),  # all first choices on expert 0, AC recomputation
])
def test_overlap_equals_plain_ep2(pools, skew, docs, ac):
    _compare(pools(2), dict(ep_size=2), skew, docs, ac)


@pytest.mark.parametrize("layout,skew", [
    (dict(ep_size=4), "empty_experts"),  # half the experts get no row: two EP ranks idle
    (dict(fsdp_size=4, ep_size=2), "one_expert"),  # FSDP x EP
])
def test_overlap_equals_plain_world4(pools, layout, skew):
    docs = [[[6], [1], [3, 4], [8]], [[2, 2], [5], [1], [7]]]
    _compare(pools(4), layout, skew, docs)


def test_overlap_order_forward_and_backward(pools):
    """The exchanges and expert calls on each rank come in the order the module docstring gives:
    forward, chunk 1's dispatch is in flight during experts 0 and chunk 0's combine during experts 1;
    backward, chunk 0's reverse combine is in flight during experts 1's backward and chunk 1's
    reverse dispatch during experts 0's."""
    every = pools(2).run(dict(fn="overlap_cases:run_overlap_trace", num_experts=4, hidden=8, tokens=6))
    expected = ["issue d0", "issue d1", "wait d0", "experts0", "issue c0", "wait d1", "experts1", "issue c1",
                "wait c0", "wait c1", "backward",
                "issue c1 (bwd)", "issue c0 (bwd)", "wait c1 (bwd)", "experts1 bwd start", "experts1 bwd end",
                "issue d1 (bwd)", "wait c0 (bwd)", "experts0 bwd start", "experts0 bwd end", "issue d0 (bwd)",
                "wait d1 (bwd)", "wait d0 (bwd)"]
    for events in every:
        assert events == expected, events
