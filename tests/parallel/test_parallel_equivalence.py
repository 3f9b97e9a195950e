"""Property: every parallel layout trains exactly like one process (gloo, CPU).

For world sizes 1, 2 and 4, a persistent process group runs many cases. Each case draws a model
(KV heads, experts, top-k), a layout (HSDP replicate x FSDP, EP, SP, activation checkpointing),
packed micro-batches with random document lengths per data-parallel rank and a routing skew
(none / all tokens to one expert / half the experts empty = a whole EP rank idle), then compares
with a single-process run on the same data: loss, global grad norm, every gradient gathered to full
(step 1) and every parameter after two optimizer steps with gradient clipping.

Two regimes, each with a bound that means something on every CPU:

* drawn cases: fp32, SGD with momentum (an update linear in the gradient), rel err <= 1e-5;
* the layout sweep: AdamW in float64 on both sides, rel err <= 1e-10. In fp32, Adam's first steps
  are about ``lr * g / (|g| + eps)`` per element, so an element whose true gradient is ~0 gets
  rounding noise of a cancelling sum (~1e-9, comparable to eps = 1e-8) amplified into an update of
  a visible fraction of lr, in either run and differently on different CPUs: measured, a single
  fp32 process was already 8.6e-6 away from the float64 result, and sharded vs single fp32 reached
  2.3e-5 on an AVX2 CPU. In float64 that noise (~1e-17) sits far below eps, so a sharded run and
  one process agree to ~1e-14 and an error in the sharded update of one part in 1e8 fails
  (`test_float64_bound_catches_a_tiny_update_error`).
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from parallel_cases import reference_toy
from parallel_layouts import TOL, TOL_F64, mismatches, valid_layouts

pytestmark = pytest.mark.dist

AC = (0.0, 0.5, 1.0)
_SETTINGS = dict(deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _model(kv_heads: int, num_experts: int, top_k: int) -> dict:
    return dict(vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=kv_heads, head_dim=4, num_experts=num_experts,
                num_experts_per_tok=top_k, moe_intermediate_size=8)


def _spec(model: dict, layout: dict, ac: float, skew: str, docs, seed: int, optim: str = "adamw",
          dtype: str = "float32") -> dict:
    return dict(fn="parallel_cases:run_toy", model=model, seed=seed, skew=skew, docs=docs, lr=1e-2, max_norm=0.5, optim=optim,
                dtype=dtype, layout=dict(layout, activation_checkpointing=ac, param_dtype=None, reduce_dtype=None))


@st.composite
def cases(draw, world: int):
    model = _model(draw(st.sampled_from([1, 2, 4])), draw(st.sampled_from([4, 8])), draw(st.sampled_from([1, 2])))
    layout = draw(st.sampled_from(valid_layouts(world, model["num_experts"], 4, model["num_key_value_heads"])))
    dp = world // layout["sp_size"]
    doc = st.lists(st.integers(1, 12), min_size=1, max_size=4)
    docs = [[draw(doc) for _ in range(dp)] for _ in range(2)]
    return _spec(model, layout, draw(st.sampled_from(AC)),
                 draw(st.sampled_from(["none", "one_expert", "empty_experts"])), docs, draw(st.integers(0, 10**6)),
                 optim="sgd", dtype="float32")


def _check(pools, world: int, spec: dict) -> dict:
    got = pools(world).run(spec)
    bad = mismatches(got, reference_toy(spec), tol=TOL_F64 if spec["dtype"] == "float64" else TOL)
    assert not bad, f"layout {spec['layout']} skew {spec['skew']} docs {spec['docs']}:\n" + "\n".join(bad[:20])
    return got


@pytest.mark.parametrize("world", [1, 2, 4])
def test_every_layout_once(pools, world):
    """Deterministic sweep: each valid layout of this world size once (AC share and skew rotate),
    AdamW in float64 (module docstring)."""
    model = _model(1, 4, 2)
    skews = ["none", "one_expert", "empty_experts"]
    for i, layout in enumerate(valid_layouts(world, 4, 4, 1)):
        dp = world // layout["sp_size"]
        docs = [[[3 + (i + r) % 5, 7, 2 + s][: 1 + (r + s) % 3] for r in range(dp)] for s in range(2)]
        _check(pools, world, _spec(model, layout, AC[i % 3], skews[i % 3], docs, seed=i, dtype="float64"))


def test_float64_bound_catches_a_tiny_update_error(pools):
    """The float64 bound is tight enough to see a sharded update that is off by one part in 1e8
    (a reference with lr * (1 + 1e-8)), which the fp32 bound of 1e-5 could never see."""
    layout = dict(hsdp_replicate=2, fsdp_size=2, ep_size=2, sp_size=2)
    spec = _spec(_model(1, 4, 2), layout, 0.5, "none", [[[5, 3], [4]], [[6], [2, 7]]], seed=3, dtype="float64")
    got = _check(pools, 4, spec)
    off = reference_toy(dict(spec, lr=spec["lr"] * (1 + 1e-8)))
    assert [m for m in mismatches(got, off, tol=TOL_F64) if m.startswith("params")]
    assert not mismatches(got, off, tol=TOL)


# 5 / 8 / 8 drawn cases (20 / 20 at worlds 2 / 4 took ~25 s more on a 2-core CPU): every layout is
# already run once by `test_every_layout_once`; these add drawn models (KV heads, 4 or 8 experts,
# top-1/2), packings, skews and the fp32 SGD regime. Many more: the soak profile below.
@pytest.mark.parametrize("world,examples", [(1, 5), (2, 8), (4, 8)])
def test_random_cases(pools, world, examples):
    """Hypothesis-drawn models, layouts, packings and skews."""
    @settings(max_examples=examples, **_SETTINGS)
    @given(spec=cases(world))
    def prop(spec):
        _check(pools, world, spec)
    prop()


@pytest.mark.soak
@pytest.mark.parametrize("world", [2, 4])
def test_random_cases_slow(pools, world):
    """The soak profile (``-m soak``; not in CI, ~3 min): many more drawn cases than `test_random_cases`."""
    @settings(max_examples=120, **dict(_SETTINGS, derandomize=False))
    @seed(20261129)  # fixed, but other draws than the derandomised CI examples
    @given(spec=cases(world))
    def prop(spec):
        _check(pools, world, spec)
    prop()
