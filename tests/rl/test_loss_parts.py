"""The parts of the policy losses against independent references (float64):

- `clipped_surrogate`: value, gradient and clip flags against the piecewise formula of each
  region (PPO-clip, clip-higher, dual clip);
- `gspo_log_ratio`: the value of the sequence log-ratio and the gradient of the token log-prob;
- the KL estimators: exact expectations over a small categorical, gradients;
- the aggregations against their formulas;
- truncated IS and ratio masking (token and sequence level) against loops;
- `pack_samples`' layout.
"""
from __future__ import annotations

import math

import pytest
import torch

from xt.rl.aggregate import aggregate, step_totals
from xt.rl.batch import loss_token_mask, pack_samples, sequence_index
from xt.rl.kl import kl_estimate, kl_penalized_rewards, sequence_kl
from xt.rl.losses import clipped_surrogate, gspo_log_ratio
from xt.rl.mismatch import mismatch_weights

F64 = torch.float64


def _piecewise(lam, a, lo, hi, c):
    """(loss, d loss / d λ, clipped_low, clipped_high, dual) of one token, by region."""
    rho = math.exp(lam)
    if a > 0 and rho > 1 + hi:
        return -a * (1 + hi), 0.0, False, True, False
    if a < 0 and rho < 1 - lo:
        return -a * (1 - lo), 0.0, True, False, False
    if a < 0 and c and rho > c:
        return -a * c, 0.0, False, False, True
    return -a * rho, -a * rho, False, False, False


@pytest.mark.parametrize("lo,hi,c", [(0.2, 0.2, 0.0), (0.2, 0.28, 0.0), (0.1, 0.3, 3.0), (3e-4, 4e-4, 0.0)])
def test_clipped_surrogate_is_the_piecewise_formula(lo, hi, c):
    lam = torch.linspace(-2.5, 2.5, 41, dtype=F64)
    lam = torch.cat([lam, torch.tensor([math.log(1 - lo) + 1e-9, math.log(1 + hi) - 1e-9, 1e-5, -1e-5], dtype=F64)])
    for a in (1.3, -0.8, 0.0):
        x = lam.clone().requires_grad_(True)
        adv = torch.full_like(x, a)
        sur = clipped_surrogate(x, adv, eps_low=lo, eps_high=hi, dual_clip=c)
        sur.loss.sum().backward()
        want = [_piecewise(float(v), a, lo, hi, c) for v in lam]
        assert sur.loss.dtype == F64
        assert sur.loss.tolist() == pytest.approx([w[0] for w in want], rel=1e-12, abs=1e-15)
        assert x.grad.tolist() == pytest.approx([w[1] for w in want], rel=1e-12, abs=1e-15)
        assert sur.clipped_low.tolist() == [w[2] for w in want]
        assert sur.clipped_high.tolist() == [w[3] for w in want]
        assert sur.dual_clipped.tolist() == [w[4] for w in want]


def test_clipped_surrogate_refuses_bad_ranges_and_never_overflows():
    with pytest.raises(ValueError, match="rl.clip_eps_low"):
        clipped_surrogate(torch.zeros(2), torch.zeros(2), eps_low=1.0)
    with pytest.raises(ValueError, match="rl.dual_clip"):
        clipped_surrogate(torch.zeros(2), torch.zeros(2), dual_clip=0.5)
    x = torch.tensor([500.0, -500.0], requires_grad=True)
    sur = clipped_surrogate(x, torch.tensor([-1.0, 1.0]))
    sur.loss.sum().backward()
    assert torch.isfinite(sur.loss).all() and torch.isfinite(x.grad).all()


def test_gspo_log_ratio_has_the_sequence_value_and_the_token_gradient():
    gen = torch.Generator().manual_seed(0)
    logp = (-torch.rand(9, generator=gen, dtype=F64) * 3).requires_grad_(True)
    old = -torch.rand(9, generator=gen, dtype=F64) * 3
    mask = torch.tensor([0, 1, 1, 1, 0, 1, 1, 0, 0], dtype=torch.bool)
    seq = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2])
    lam = gspo_log_ratio(logp, old, mask, seq, 3)
    for i, toks in enumerate(([1, 2, 3], [5, 6])):
        mean = sum(float(logp[t].detach() - old[t]) for t in toks) / len(toks)
        assert [float(lam[t].detach()) for t in toks] == pytest.approx([mean] * len(toks), rel=1e-12)
    assert float(lam[0].detach()) == 0 and float(lam[7].detach()) == 0
    lam.sum().backward()
    assert logp.grad.tolist() == mask.double().tolist()


def test_kl_estimators_expectations_and_gradients():
    gen = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(7, generator=gen, dtype=F64), 0)
    q = torch.softmax(torch.randn(7, generator=gen, dtype=F64), 0)
    kl = float((p * (p.log() - q.log())).sum())
    k = {e: kl_estimate(p.log(), q.log(), e) for e in ("k1", "k2", "k3")}
    assert float((p * k["k1"]).sum()) == pytest.approx(kl, rel=1e-12)  # unbiased
    assert float((p * k["k3"]).sum()) == pytest.approx(kl, rel=1e-12)  # unbiased
    assert bool((k["k2"] >= 0).all() and (k["k3"] >= 0).all()) and bool((k["k1"] < 0).any())
    logp = p.log().clone().requires_grad_(True)
    kl_estimate(logp, q.log(), "k3").sum().backward()
    x = q.log() - p.log()
    assert logp.grad.tolist() == pytest.approx((1 - x.exp()).tolist(), rel=1e-12)
    with pytest.raises(ValueError, match="rl.kl_estimator"):
        kl_estimate(p, q, "k4")


def _batch():
    prompts = [[1, 2], [3], [4, 5, 6], [7]]
    responses = [[8, 9, 10], [11, 12], [13], [14, 15, 16, 17]]
    return pack_samples(prompts, responses, advantages=[1.0, -1.0, 0.5, 2.0], keep=[True, True, False, True])


def test_pack_samples_layout():
    b = _batch()
    assert b["input_ids"].tolist() == [1, 2, 8, 9, 10, 3, 11, 12, 4, 5, 6, 13, 7, 14, 15, 16, 17]
    assert b["labels"].tolist() == [-100, 8, 9, 10, -100, 11, 12, -100, -100, -100, 13, -100, 14, 15, 16, 17, -100]
    assert b["cu_seqlens"].tolist() == [0, 5, 8, 12, 17] and b["max_seqlen"] == 5
    assert b["advantages"].tolist() == [0, 1, 1, 1, 0, -1, -1, 0, 0, 0, 0.5, 0, 2, 2, 2, 2, 0]
    mask = loss_token_mask(b)
    assert mask.tolist() == [bool(v) for v in [0, 1, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0]]
    assert {k: int(v) for k, v in step_totals([b]).items()} == {"tokens": 9, "sequences": 3}
    with pytest.raises(ValueError, match=r"old_log_probs\[0\] has 2 values for a response of 3"):
        pack_samples([[1]], [[2, 3, 4]], old_log_probs=[[0.0, 0.0]])
    with pytest.raises(ValueError, match="at least one token"):
        pack_samples([[]], [[2]])


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "constant"])
def test_aggregations_are_their_formulas(mode):
    b = _batch()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(17, generator=gen, dtype=F64)
    mask = loss_token_mask(b)
    seq, d = sequence_index(b)
    totals = step_totals([b])
    got = aggregate(x, mask, seq, d, totals, mode, max_response_tokens=6)
    rows = [[float(x[t]) for t in range(17) if mask[t] and int(seq[t]) == i] for i in range(d)]
    rows = [r for r in rows if r]
    want = {"token_mean": sum(map(sum, rows)) / sum(map(len, rows)),
            "seq_mean_token_mean": sum(sum(r) / len(r) for r in rows) / len(rows),
            "constant": sum(map(sum, rows)) / (len(rows) * 6)}[mode]
    assert float(got) == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="rl.max_response_tokens"):
        aggregate(x, mask, seq, d, totals, "constant")


@pytest.mark.parametrize("tis,mask_level", [("token", "off"), ("sequence", "off"), ("off", "token"),
                                            ("off", "sequence"), ("token", "sequence"), ("sequence", "token")])
def test_truncated_is_and_masking_against_loops(tis, mask_level):
    b = _batch()
    gen = torch.Generator().manual_seed(3)
    old = -torch.rand(17, generator=gen, dtype=F64) * 2
    rollout = old + torch.randn(17, generator=gen, dtype=F64) * 0.7
    mask = loss_token_mask(b)
    seq, d = sequence_index(b)
    cap, low, high = 1.8, 0.6, 1.7
    got = mismatch_weights(old, rollout, mask, seq, d, tis=tis, tis_cap=cap, mask_level=mask_level,
                           mask_low=low, mask_high=high)
    for i in range(d):
        toks = [t for t in range(17) if mask[t] and int(seq[t]) == i]
        rho = [math.exp(float(old[t] - rollout[t])) for t in toks]
        if tis == "token":
            w = [min(r, cap) for r in rho]
        elif tis == "sequence":
            w = [min(math.prod(rho), cap)] * len(toks)
        else:
            w = [1.0] * len(toks)
        if mask_level == "token":
            keep = [low <= r <= high for r in rho]
        elif mask_level == "sequence":
            keep = [low <= math.exp(sum(map(math.log, rho)) / len(rho)) <= high] * len(toks) if toks else []
        else:
            keep = [True] * len(toks)
        assert [float(got.weights[t]) for t in toks] == pytest.approx([a * k for a, k in zip(w, keep)], rel=1e-6)
        assert [bool(got.masked[t]) for t in toks] == [not k for k in keep]
        capped = [r > cap for r in rho] if tis == "token" else [math.prod(rho) > cap] * len(toks)
        assert [bool(got.capped[t]) for t in toks] == (capped if tis != "off" else [False] * len(toks))
    assert float(got.weights[~mask].abs().sum()) == 0


def test_sequence_kl_in_the_reward():
    b = _batch()
    gen = torch.Generator().manual_seed(4)
    logp, ref = -torch.rand(17, generator=gen, dtype=F64), -torch.rand(17, generator=gen, dtype=F64)
    mask = loss_token_mask(b)
    seq, d = sequence_index(b)
    per_seq = sequence_kl(logp, ref, mask, seq, d, "k1")
    want = [sum(float(logp[t] - ref[t]) for t in range(17) if mask[t] and int(seq[t]) == i) for i in range(d)]
    assert per_seq.tolist() == pytest.approx(want, rel=1e-12)
    r = torch.tensor([1.0, 0.0, 0.5, 1.0], dtype=F64)
    assert kl_penalized_rewards(r, per_seq, 0.1).tolist() == pytest.approx((r - 0.1 * torch.tensor(want)).tolist())
    with pytest.raises(ValueError, match="rl.kl_coef"):
        kl_penalized_rewards(r, per_seq, -1.0)
