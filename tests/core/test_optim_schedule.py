"""AdamW groups and the LR schedule, checked against the schedule formula written out here."""
import math

import pytest
import torch

from xt.core.config import OptimConfig, ScheduleConfig
from xt.core.engine import build_optimizer, build_scheduler, lr_factor

from xtcore_tiny import TinyLM


def _expected(step, total, warmup, decay, r):
    """The documented schedule, written independently of xt.core.engine.optim."""
    if step < warmup:
        return (step + 1) / warmup
    if decay == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if decay == "cosine":
        shape = (1 + math.cos(math.pi * progress)) / 2
    else:
        shape = 1 - progress
    return r + (1 - r) * shape


@pytest.mark.parametrize("decay", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("warmup", [0, 1, 4])
def test_scheduler_lr_follows_formula(decay, warmup):
    total, peak, r = 12, 2e-3, 0.1
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([p], lr=peak)
    sched = build_scheduler(opt, ScheduleConfig(warmup_steps=warmup, decay=decay, min_lr_ratio=r),
                            total)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])  # the LR this optimizer step uses
        p.grad = torch.ones(3)
        opt.step()
        sched.step()
    want = [peak * _expected(s, total, warmup, decay, r) for s in range(total)]
    assert seen == pytest.approx(want, rel=1e-12, abs=0)
    if warmup:
        assert seen[warmup - 1] == pytest.approx(peak, rel=1e-12)
        assert seen[0] == pytest.approx(peak / warmup, rel=1e-12)
    if decay != "constant":
        assert all(a >= b for a, b in zip(seen[warmup:], seen[warmup + 1:]))  # monotone decay
        assert min(seen[warmup:]) > r * peak


def test_cosine_midpoint_and_floor():
    cfg = ScheduleConfig(warmup_steps=2, decay="cosine", min_lr_ratio=0.2)
    assert lr_factor(2 + 5, 12, cfg) == pytest.approx(0.2 + 0.8 * 0.5)  # p = 0.5
    assert lr_factor(50, 12, cfg) == pytest.approx(0.2)  # past the end: the floor


def test_adamw_groups_decay_and_tied_params():
    model = TinyLM()
    opt = build_optimizer(model, OptimConfig(lr=1e-3, weight_decay=0.1, betas=(0.8, 0.9)))
    decay, no_decay = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["emb.weight", "mix.weight"]
    assert all(p.ndim == 1 for p in no_decay["params"]) and len(no_decay["params"]) == 4
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["betas"] == (0.8, 0.9) and decay["foreach"] is True
    n_params = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_params == sum(p.numel() for p in model.parameters())  # tied weight counted once


def test_adamw_impl_choice():
    model = TinyLM()
    assert build_optimizer(model, OptimConfig(impl="for_loop")).defaults["foreach"] is False
    assert build_optimizer(model, OptimConfig(impl="fused")).defaults["fused"] is True
    one = build_optimizer(model, OptimConfig(decay_1d_params=True))
    assert len(one.param_groups) == 1
