"""`xt.kernels.optim.AdamWRefresh` on its torch backend (the formula the Triton kernel follows; the
kernel itself runs in ``triton_interp_optim.py``) against float64 torch AdamW, its copies against
the exact cast, its state against torch's AdamW (checkpoints move between the two), and the
``optim.impl`` config route. Tolerances: ``_optim_cases.py``."""
from __future__ import annotations

import copy

import pytest
import torch

from xt.core.config import ConfigError, OptimConfig
from xt.core.engine import build_optimizer
from xt.core.engine import optim as core_optim
from xt.core.engine.optim import takes_grad_scale
from xt.kernels.optim import AdamWRefresh

from _optim_cases import CASE_IDS, CASES
from _refs import rel


@pytest.mark.parametrize("check,dtype", CASES, ids=CASE_IDS)
def test_torch_backend_against_float64_adamw_and_the_exact_cast(check, dtype):
    check("torch", dtype)


def test_state_moves_between_torch_adamw_and_this_one():
    """torch AdamW's state loaded here (and back) continues the same run: same keys, same update."""
    gen = torch.Generator().manual_seed(4)
    p = torch.nn.Parameter(torch.randn(50, generator=gen, dtype=torch.float64))
    q = torch.nn.Parameter(p.detach().clone())
    a = torch.optim.AdamW([p], lr=1e-2, foreach=False)
    for _ in range(2):
        p.grad = torch.randn(50, generator=gen, dtype=torch.float64)
        a.step()
    b = AdamWRefresh([q], lr=1e-2, backend="torch")
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # load_state_dict keeps the same tensors
    with torch.no_grad():
        q.copy_(p)
    g = torch.randn(50, generator=gen, dtype=torch.float64)
    p.grad, q.grad = g, g.clone()
    a.step()
    b.step()
    assert rel(q, p) < 1e-14
    back = torch.optim.AdamW([torch.nn.Parameter(q.detach().clone())], lr=1e-2, foreach=False)
    back.load_state_dict(copy.deepcopy(b.state_dict()))
    assert float(back.state_dict()["state"][0]["step"]) == 3.0


def test_config_builds_it_and_the_engine_folds_the_clip_into_it():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    opt = build_optimizer(model, OptimConfig(impl="fused_bf16_refresh", weight_decay=0.05))
    assert isinstance(opt, AdamWRefresh) and takes_grad_scale(opt)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


def test_unregistered_impl_is_a_config_error_naming_the_key(monkeypatch):
    monkeypatch.setattr(core_optim, "_REGISTERED", {})
    with pytest.raises(ConfigError, match="optim.impl"):
        build_optimizer(torch.nn.Linear(2, 2), OptimConfig(impl="fused_bf16_refresh"))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="backend"):
        AdamWRefresh([torch.nn.Parameter(torch.zeros(2))], backend="cuda")
    with pytest.raises(ValueError, match="float32 or float64"):
        AdamWRefresh([torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))])
    opt = AdamWRefresh([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="does not fit"):
        opt.attach_compute_copies([(torch.nn.Parameter(torch.zeros(2)), torch.zeros(3, dtype=torch.bfloat16))])
    if not (torch.cuda.is_available()):
        with pytest.raises(RuntimeError, match="triton"):
            p = torch.nn.Parameter(torch.zeros(2))
            p.grad = torch.ones(2)
            AdamWRefresh([p], backend="triton").step()
