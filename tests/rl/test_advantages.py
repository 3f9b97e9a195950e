"""`xt.rl.advantages`: GRPO, Dr.GRPO and RLOO against their formulas, and the NaN policy
(never NaN, for any rewards; excluded non-finite rewards; zero for groups without spread)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xt.rl.advantages import (dr_grpo_advantages, group_advantages, grpo_advantages, rloo_advantages)
from xt.rl.dapo import dynamic_sampling

ESTIMATORS = {"grpo": grpo_advantages, "dr_grpo": dr_grpo_advantages, "rloo": rloo_advantages}
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True, width=64)
GROUPS = st.lists(st.lists(ANY_FLOAT, min_size=1, max_size=6), min_size=1, max_size=5)


def _flat(groups):
    rewards = torch.tensor([r for g in groups for r in g], dtype=torch.float64)
    ids = torch.tensor([7 * i - 3 for i, g in enumerate(groups) for _ in g])  # any integer ids
    return rewards, ids


def _formula(name, group):
    """The estimator written out for one group of finite rewards (python floats)."""
    g = len(group)
    mean = sum(group) / g
    if len(set(group)) == 1:
        return [0.0] * g
    if name == "grpo":
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (g - 1))
        return [(r - mean) / (std + 1e-6) for r in group]
    if name == "dr_grpo":
        return [r - mean for r in group]
    return [r - (sum(group) - r) / (g - 1) for r in group]


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_each_estimator_is_its_formula(name):
    gen = torch.Generator().manual_seed(0)
    groups = [torch.rand(g, generator=gen, dtype=torch.float64).tolist() for g in (4, 1, 3, 8)]
    groups.append([0.5, 0.5, 0.5])
    rewards, ids = _flat(groups)
    got = ESTIMATORS[name](rewards, ids)
    want = torch.tensor([a for grp in groups for a in _formula(name, grp)], dtype=torch.float64)
    assert got.dtype == torch.float64
    assert float((got - want).abs().max()) <= 1e-12
    assert torch.equal(group_advantages(rewards, ids, estimator=name), got)


def test_rows_are_groups_and_float32_stays_float32():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    a = grpo_advantages(r)
    assert a.shape == r.shape and a.dtype == torch.float32
    assert torch.equal(a[1], torch.zeros(4))
    assert a[0].tolist() == pytest.approx([math.sqrt(3) / 2, -math.sqrt(3) / 2, -math.sqrt(3) / 2, math.sqrt(3) / 2], rel=1e-5)
    assert grpo_advantages(r, scale_by_std=False)[0].tolist() == [0.5, -0.5, -0.5, 0.5]


@settings(max_examples=150, deadline=None)
@given(groups=GROUPS, name=st.sampled_from(list(ESTIMATORS)))
def test_never_nan_and_non_finite_rewards_are_excluded(groups, name):
    rewards, ids = _flat(groups)
    got = ESTIMATORS[name](rewards, ids)
    assert not torch.isnan(got).any()
    finite = torch.isfinite(rewards)
    assert torch.equal(got[~finite], torch.zeros(int((~finite).sum()), dtype=got.dtype))
    # the same as the estimator on the finite rewards alone
    if finite.any():
        alone = ESTIMATORS[name](rewards[finite], ids[finite])
        assert torch.equal(got[finite], alone)
    if name == "grpo":  # bounded whatever eps: |A| < sqrt(G)
        sizes = torch.tensor([len(g) for g in groups]).repeat_interleave(torch.tensor([len(g) for g in groups]))
        assert bool((got.abs() < sizes.double().sqrt()).all())
    if all(abs(r) <= 1e300 for g in groups for r in g if math.isfinite(r)):
        assert torch.isfinite(got).all()


@settings(max_examples=100, deadline=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False, width=64), size=st.integers(1, 8),
       name=st.sampled_from(list(ESTIMATORS)), eps=st.sampled_from([0.0, 1e-6]))
def test_groups_without_spread_are_exactly_zero(value, size, name, eps):
    r = torch.full((1, size), value, dtype=torch.float64)
    kwargs = {"eps": eps} if name == "grpo" else {}
    assert torch.equal(ESTIMATORS[name](r, **kwargs), torch.zeros(1, size, dtype=torch.float64))


@settings(max_examples=100, deadline=None)
@given(base=st.floats(-1e6, 1e6), ulps=st.lists(st.integers(-3, 3), min_size=2, max_size=6))
def test_near_equal_groups_stay_bounded(base, ulps):
    r = torch.tensor([base + u * math.ulp(base or 1.0) for u in ulps], dtype=torch.float64)[None]
    for eps in (0.0, 1e-6):
        a = grpo_advantages(r, eps=eps)
        assert torch.isfinite(a).all() and float(a.abs().max()) < math.sqrt(r.shape[1])


def test_nonfinite_raise_names_the_sample_and_bad_inputs_are_refused():
    r = torch.tensor([0.0, 1.0, float("nan"), 2.0])
    with pytest.raises(ValueError, match="sample 2 is nan.*nonfinite_reward"):
        grpo_advantages(r, torch.zeros(4), nonfinite="raise")
    with pytest.raises(ValueError, match="group_ids"):
        grpo_advantages(r)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        grpo_advantages(r, torch.zeros(4), eps=-1.0)
    with pytest.raises(ValueError, match="rl.advantage"):
        group_advantages(r, torch.zeros(4), estimator="ppo")
    assert grpo_advantages(torch.zeros(0), torch.zeros(0, dtype=torch.long)).shape == (0,)


def test_dynamic_sampling_keeps_exactly_the_groups_with_signal():
    r = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, float("nan"), 0.0], [0.2, 0.3, float("nan")]])
    ds = dynamic_sampling(r, target_groups=6)
    adv = grpo_advantages(r)
    assert ds.keep.tolist() == (adv != 0).reshape(4, 3).any(1).repeat_interleave(3).tolist()
    assert ds.kept_groups.tolist() == [0, 3] and (ds.num_groups, ds.num_kept) == (4, 2)
    assert ds.groups_needed == 4 and ds.groups_to_draw == 8  # keep rate 1/2
    none = dynamic_sampling(torch.ones(4, 2), target_groups=2)
    assert none.num_kept == 0 and none.groups_to_draw == 8  # rate taken as 1/4
    assert dynamic_sampling(r).groups_to_draw == 0
