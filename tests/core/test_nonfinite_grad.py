"""`train.nonfinite_grad`: "skip" drops a step with a NaN/inf gradient norm and leaves weights,
AdamW state and the LR schedule as they were (counted in ``skipped_steps``); "raise" (the
default) still raises `FloatingPointError` with the message it always had."""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from rich.console import Console

from xt.core.config import (CheckpointConfig, ConfigError, ConfigFieldError, ConfigStruct,
                            OptimConfig, ScheduleConfig, TrainConfig, load_config)
from xt.core.engine import Engine, TokenMeanLoss, Trainer, read_metrics

from xtcore_tiny import StatefulLoader, TinyLM

torch.set_num_threads(1)
_SCHEDULE = ScheduleConfig(warmup_steps=3, decay="linear")  # the LR changes every step


def _engine(model, policy):
    return Engine.from_config(model, TrainConfig(steps=6, dtype="fp32", max_grad_norm=1.0,
                                                 nonfinite_grad=policy),
                              OptimConfig(lr=1e-2), _SCHEDULE)


def _nan_loss(value=float("nan")):
    default = TokenMeanLoss()
    return lambda out, batch, ctx: default(out, batch, ctx) * value


def _snapshot(engine):
    return ({n: p.detach().clone() for n, p in engine.model.named_parameters()},
            copy.deepcopy(engine.optimizer.state_dict()), copy.deepcopy(engine.scheduler.state_dict()))


def _assert_same_state(a, b):
    for name in a[0]:
        assert torch.equal(a[0][name], b[0][name]), name
    sa, sb = a[1]["state"], b[1]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for field in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[k][field], sb[k][field]), (k, field)
    assert a[1]["param_groups"] == b[1]["param_groups"] and a[2] == b[2]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_skip_leaves_weights_optimizer_and_schedule_and_counts(bad):
    loader = StatefulLoader()
    steps = [[next(loader), next(loader)] for _ in range(3)]
    torch.manual_seed(0)
    model = TinyLM()
    ref_model = copy.deepcopy(model)
    engine = _engine(model, "skip")
    engine.forward_backward(steps[0])
    first = engine.optim_step()
    assert not first.skipped and engine.optimizer.state  # AdamW state exists now
    before, lr_before = _snapshot(engine), engine.optimizer.param_groups[0]["lr"]

    engine.forward_backward(steps[1], loss=_nan_loss(bad))
    skipped = engine.optim_step()
    assert skipped.skipped and not math.isfinite(skipped.grad_norm) and skipped.metrics == {}
    assert skipped.lr == lr_before == engine.optimizer.param_groups[0]["lr"]
    assert engine.step == 2 and engine.skipped_steps == 1
    assert all(p.grad is None for p in model.parameters())
    _assert_same_state(_snapshot(engine), before)

    # the skipped step is invisible to the trajectory: the same as never having taken it
    engine.forward_backward(steps[2])
    engine.optim_step()
    ref = _engine(ref_model, "raise")
    for mbs in (steps[0], steps[2]):
        ref.forward_backward(mbs)
        ref.optim_step()
    _assert_same_state(_snapshot(engine), _snapshot(ref))
    assert engine.state_dict() == {"step": 3, "skipped_steps": 1, "scheduler": ref.scheduler.state_dict()}


def test_raise_keeps_the_message_and_the_weights():
    torch.manual_seed(1)
    model = TinyLM()
    engine = _engine(model, "raise")
    before = _snapshot(engine)
    engine.forward_backward([next(StatefulLoader())], loss=_nan_loss())
    with pytest.raises(FloatingPointError) as e:
        engine.optim_step()
    assert str(e.value) == ("step 1: gradient norm is nan (loss {}); optimizer step skipped. Lower "
                            "optim.lr, check the data, or use train.dtype=fp32"
                            .format(engine._last_loss()))
    assert engine.step == 0 and engine.skipped_steps == 0
    _assert_same_state(_snapshot(engine), before)
    assert any(p.grad is not None for p in model.parameters())  # left for inspection


def test_trainer_skip_logs_skipped_steps_and_keeps_going(tmp_path):
    torch.manual_seed(2)
    model = TinyLM()
    with torch.no_grad():
        model.mix.weight[0, 0] = float("nan")  # every step's gradient norm is NaN
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = io.StringIO()
    tr = Trainer(model, StatefulLoader(),
                 TrainConfig(steps=3, micro_batches_per_step=2, out_dir=str(tmp_path), dtype="fp32",
                             log_every=1, nonfinite_grad="skip"),
                 OptimConfig(lr=1e-2), _SCHEDULE, CheckpointConfig(save_final=True, hf_export=False),
                 console=Console(file=out, width=200))
    res = tr.fit()
    rows = read_metrics(res.metrics_path)
    assert [r["step"] for r in rows] == [1, 2, 3] and [r["skipped_steps"] for r in rows] == [1, 2, 3]
    assert len({r["lr"] for r in rows}) == 1  # the schedule did not move
    assert all(r["grad_norm"] is None for r in rows)  # NaN is written as null
    for n, p in model.named_parameters():
        assert torch.allclose(p, before[n], equal_nan=True, rtol=0, atol=0), n
    assert "skipped 3 (non-finite grad norm)" in out.getvalue()
    # the count survives a checkpoint
    again = Trainer(TinyLM(), StatefulLoader(),
                    TrainConfig(steps=3, out_dir=str(tmp_path), dtype="fp32", nonfinite_grad="skip"),
                    OptimConfig(lr=1e-2), _SCHEDULE, console=Console(file=io.StringIO()))
    assert again.load(res.checkpoint) == 3
    assert again.engine.skipped_steps == 3 and again.step == 3


def test_config_key_is_validated():
    assert TrainConfig().nonfinite_grad == "raise"
    with pytest.raises(ConfigFieldError, match="`nonfinite_grad` must be one of \\['raise', 'skip'\\]"):
        TrainConfig(nonfinite_grad="ignore")


class _Top(ConfigStruct):
    train: TrainConfig = TrainConfig()


def test_config_key_loads_and_a_bad_value_names_it():
    assert load_config(None, _Top, ["train.nonfinite_grad='skip'"]).train.nonfinite_grad == "skip"
    with pytest.raises(ConfigError) as e:
        load_config(None, _Top, ["train.nonfinite_grad='ignore'"])
    assert e.value.key == "train.nonfinite_grad" and "'raise'" in str(e.value) and "'skip'" in str(e.value)
