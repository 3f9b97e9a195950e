"""Gradient clipping folded into torch's fused AdamW (``optimizer.grad_scale``) gives the updates
of today's path (clip by multiplying every gradient, then the fused step), on the CPU in fp32.

The folded path divides each gradient by ``max(1, (norm + eps) / max_norm)`` inside the fused
kernel; the old path multiplies by ``min(1, max_norm / (norm + eps))`` first. Per element the two
gradients differ by at most a couple of float32 roundings, so with clipping active the weights
agree to 1e-7 relative and the distance they moved to 5e-6 (measured 7.6e-7 after three steps:
Adam's ``m / (sqrt(v) + eps)`` magnifies a rounding of a near-zero gradient); with clipping
inactive the scale is exactly 1 and the updates are equal bit for bit.
"""
from __future__ import annotations

import copy

import pytest
import torch

from xt.core.config import OptimConfig
from xt.core.distributed import LocalDistContext
from xt.core.engine import Engine, build_optimizer
from xt.core.engine.optim import clip_divisor, takes_grad_scale

from xtcore_tiny import StatefulLoader, TinyLM

torch.set_num_threads(1)


def _old_step(model, opt, mbs, max_norm):
    """Today's step written out: gradients of the default objective, clip in a pass, fused step."""
    ref = Engine(model, opt)  # max_grad_norm 0: measures only
    ref.forward_backward(mbs)
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(norm)


def _rel(a, b):
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("max_norm,active", [(0.05, True), (1e6, False)], ids=["clipping", "not-clipping"])
def test_folded_clip_updates_equal_the_separate_clip_pass(max_norm, active):
    torch.manual_seed(0)
    model = TinyLM(aux_coef=0.1)
    ref = copy.deepcopy(model)
    cfg = OptimConfig(lr=1e-2, weight_decay=0.1, impl="fused")
    engine = Engine(model, build_optimizer(model, cfg), max_grad_norm=max_norm)
    ref_opt = build_optimizer(ref, cfg)
    assert takes_grad_scale(engine.optimizer)
    loader = StatefulLoader(seed=3)
    start = {n: p.detach().clone() for n, p in ref.named_parameters()}
    for _ in range(3):
        mbs = [next(loader) for _ in range(2)]
        ref_norm = _old_step(ref, ref_opt, mbs, max_norm)
        engine.forward_backward(mbs)
        stats = engine.optim_step()
        assert stats.grad_norm == pytest.approx(ref_norm, rel=1e-6)
        assert (ref_norm > max_norm) == active
    assert not hasattr(engine.optimizer, "grad_scale")  # set for the step only
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        if active:  # the weights to 1e-7; the distance moved to 5e-6 (measured 7.6e-7, 3 steps)
            assert _rel(p, q) < 1e-7, name
            assert _rel(p - start[name], q - start[name]) < 5e-6, name
        else:
            assert torch.equal(p, q), name
    for s, r in zip(engine.optimizer.state.values(), ref_opt.state.values()):
        for key in ("exp_avg", "exp_avg_sq"):
            assert _rel(s[key], r[key]) < 5e-6 if active else torch.equal(s[key], r[key]), key


def test_clip_divisor_is_the_inverse_of_torchs_clip_factor():
    norms = torch.tensor([0.0, 0.3, 1.0, 7.5, 1e4])
    for n in norms:
        s = clip_divisor(n, 1.0)
        assert s.dtype == torch.float32
        coef = min(1.0, 1.0 / (float(n) + 1e-6))
        assert float(s) == pytest.approx(1.0 / coef, rel=1e-7)
    assert float(clip_divisor(torch.tensor(0.5), 1.0)) == 1.0  # under the threshold: exactly 1


def test_only_fused_plain_adamw_takes_the_scale_and_others_keep_the_clip_pass():
    model = TinyLM()
    assert not takes_grad_scale(build_optimizer(model, OptimConfig(impl="foreach")))
    assert not takes_grad_scale(torch.optim.SGD(model.parameters(), lr=0.1))
    # a foreach AdamW still clips in its own pass, as before (bit for bit)
    torch.manual_seed(1)
    model = TinyLM()
    ref = copy.deepcopy(model)
    cfg = OptimConfig(lr=1e-2, impl="foreach")
    engine = Engine(model, build_optimizer(model, cfg), max_grad_norm=0.05)
    ref_opt = build_optimizer(ref, cfg)
    mbs = [next(StatefulLoader(seed=5)) for _ in range(1)]
    _old_step(ref, ref_opt, mbs, 0.05)
    engine.forward_backward(mbs)
    engine.optim_step()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


def test_measure_only_norm_leaves_the_gradients_untouched():
    g = [torch.randn(5, 3), torch.randn(4)]
    params = []
    for t in g:
        p = torch.nn.Parameter(torch.zeros_like(t))
        p.grad = t.clone()
        params.append(p)
    norm = LocalDistContext().clip_grad_norm_(params, float("inf"))
    want = torch.cat([t.flatten() for t in g]).double().norm()
    assert float(norm) == pytest.approx(float(want), rel=1e-6)
    for p, t in zip(params, g):
        assert torch.equal(p.grad, t)
