"""Named extra state in checkpoints: saved and restored with the rest (resume equivalence with a
state that changes every step), checked names (missing = error, unused = warning), states that
would not load refused at save time, and interrupted saves that resume never picks up."""
from __future__ import annotations

import io
import json
import random
import warnings

import pytest
import torch
from rich.console import Console

import xt.core.checkpoint.io as ckpt_io
from xt.core.checkpoint import latest_checkpoint, load_checkpoint, resolve_resume, save_checkpoint
from xt.core.config import CheckpointConfig, OptimConfig, ScheduleConfig, TrainConfig
from xt.core.engine import Trainer, build_optimizer, build_scheduler, read_metrics
from xt.core.errors import CheckpointError, CheckpointWarning

from xtcore_tiny import AdaptiveCoef, CoefLM, StatefulLoader, TinyLM

torch.set_num_threads(1)
N, M = 3, 2


def _trainer(out_dir, steps=N + M, every=N, extra=True, save_final=True):
    torch.manual_seed(123)
    coef = AdaptiveCoef()
    tr = Trainer(CoefLM(coef), StatefulLoader(),
                 TrainConfig(steps=steps, micro_batches_per_step=2, out_dir=str(out_dir), seed=5,
                             log_every=1, dtype="fp32"),
                 OptimConfig(lr=3e-2), ScheduleConfig(warmup_steps=2),
                 CheckpointConfig(every_steps=every, keep_last=0, hf_export=False, save_final=save_final),
                 console=Console(file=io.StringIO()), extra_state={"coef": coef} if extra else None)
    return tr, coef


def test_resume_with_extra_state_equals_one_run(tmp_path):
    full, full_coef = _trainer(tmp_path / "full")
    full.fit()
    ref = read_metrics(tmp_path / "full" / "metrics.jsonl")

    first, _ = _trainer(tmp_path / "split")
    r1 = first.fit(until_step=N)
    meta = json.loads((r1.checkpoint / "meta.json").read_text())
    assert meta["extra_state"] == ["coef", "engine", "settings"]
    torch.manual_seed(999)
    random.seed(999)
    second, coef = _trainer(tmp_path / "split")
    r2 = second.fit(resume="auto")
    assert r2.resumed_from == r1.checkpoint and r2.step == N + M
    got = read_metrics(tmp_path / "split" / "metrics.jsonl")
    for key in ("loss", "aux_loss", "grad_norm", "lr"):
        assert [m[key] for m in got] == [m[key] for m in ref], key  # bit-exact
    assert coef.calls == full_coef.calls == 2 * (N + M) and coef.history == full_coef.history
    assert torch.equal(coef.ema, full_coef.ema)
    for (name, p), q in zip(full.model.named_parameters(), second.model.parameters()):
        assert torch.equal(p, q), name

    # without the controller's state the resumed run differs (the test can tell)
    other, _ = _trainer(tmp_path / "split")
    with pytest.warns(CheckpointWarning, match="'coef'"):
        other.extra_state = {}
        other.load(r1.checkpoint)
    m = other.train_step([next(other.loader), next(other.loader)])
    assert m["aux_loss"] != ref[N]["aux_loss"]


def _parts(seed=0):
    torch.manual_seed(seed)
    model = TinyLM()
    opt = build_optimizer(model, OptimConfig(lr=1e-2))
    return model, opt, build_scheduler(opt, ScheduleConfig(), 10), StatefulLoader()


class Box:
    """A Stateful holding any value."""

    def __init__(self, value=None):
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def test_round_trip_and_name_checks(tmp_path):
    model, opt, sched, loader = _parts()
    a, b = Box({"nested": [1, 2.5, "x"], "t": torch.arange(4)}), Box(7)
    path = save_checkpoint(tmp_path, 1, model, opt, sched, loader, extra_state={"b": b, "a": a})
    assert json.loads((path / "meta.json").read_text())["extra_state"] == ["a", "b"]

    model2, opt2, sched2, loader2 = _parts(seed=1)
    a2, b2 = Box(), Box()
    assert load_checkpoint(path, model2, opt2, sched2, loader2, extra_state={"a": a2, "b": b2}) == 1
    assert a2.value["nested"] == [1, 2.5, "x"] and torch.equal(a2.value["t"], torch.arange(4))
    assert b2.value == 7

    # asking for a state the checkpoint lacks: an error, before anything is loaded
    model3, opt3, sched3, loader3 = _parts(seed=2)
    init = {n: p.detach().clone() for n, p in model3.named_parameters()}
    with pytest.raises(CheckpointError, match="no extra state named 'rl'"):
        load_checkpoint(path, model3, opt3, sched3, loader3, extra_state={"a": Box(), "b": Box(), "rl": Box()})
    for n, p in model3.named_parameters():
        assert torch.equal(p, init[n]), n
    assert loader3.index == 0
    # not asking for a state the checkpoint has: a warning, the rest loads
    with pytest.warns(CheckpointWarning, match="'b'"):
        load_checkpoint(path, model3, opt3, sched3, loader3, extra_state={"a": Box()})
    # a checkpoint written before (or without) extra state
    plain = save_checkpoint(tmp_path, 2, model, opt, sched, loader)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(plain, model3, opt3, sched3, loader3)
    with pytest.raises(CheckpointError, match="no extra state named 'a'"):
        load_checkpoint(plain, model3, opt3, sched3, loader3, extra_state={"a": Box()})


def test_bad_extra_state_arguments():
    model, opt, sched, loader = _parts()
    with pytest.raises(TypeError, match="extra_state\\['x'\\] \\(int\\) has no state_dict"):
        save_checkpoint("unused", 1, model, opt, sched, loader, extra_state={"x": 3})
    with pytest.raises(TypeError, match="non-empty strings"):
        save_checkpoint("unused", 1, model, opt, sched, loader, extra_state={"": Box()})
    with pytest.raises(ValueError, match="'engine' is the Trainer's own"):
        Trainer(TinyLM(), StatefulLoader(), TrainConfig(dtype="fp32"), extra_state={"engine": Box()})


class Opaque:
    """Something torch.load(weights_only=True) refuses."""


def test_state_that_would_not_load_is_refused_at_save(tmp_path):
    model, opt, sched, loader = _parts()
    good = save_checkpoint(tmp_path, 1, model, opt, sched, loader, extra_state={"s": Box(1)})
    with pytest.raises(CheckpointError, match="extra_state\\['s'\\] cannot be checkpointed"):
        save_checkpoint(tmp_path, 2, model, opt, sched, loader, extra_state={"s": Box(Opaque())})
    assert latest_checkpoint(tmp_path) == good and not (tmp_path / "checkpoints" / "step-2").exists()


class Crashing(Box):
    """Killed while its state is taken: the save is interrupted half-way (DCP files written)."""

    def __init__(self, value=None, crash=False):
        super().__init__(value)
        self.crash = crash

    def state_dict(self):
        if self.crash:
            raise KeyboardInterrupt("killed during save")
        return super().state_dict()


def test_interrupted_saves_are_never_resumed_from(tmp_path, monkeypatch):
    model, opt, sched, loader = _parts()
    box = Crashing(1)
    good = save_checkpoint(tmp_path, 1, model, opt, sched, loader, extra_state={"s": box})
    ckroot = tmp_path / "checkpoints"

    box.crash = True  # killed while the rank files are written
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, model, opt, sched, loader, extra_state={"s": box})
    assert (ckroot / "step-2.tmp" / "model_optim" / ".metadata").exists()
    assert not (ckroot / "step-2").exists() and resolve_resume("auto", tmp_path) == good

    box.crash = False  # killed after meta.json was written, before the rename
    real_replace = ckpt_io.os.replace

    def crash(*args):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(ckpt_io.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 3, model, opt, sched, loader, extra_state={"s": box})
    monkeypatch.setattr(ckpt_io.os, "replace", real_replace)
    assert (ckroot / "step-3.tmp" / "meta.json").exists() and not (ckroot / "step-3").exists()
    assert resolve_resume("auto", tmp_path) == good
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        resolve_resume(ckroot / "step-3.tmp", tmp_path)
    restored = Box()
    load_checkpoint(resolve_resume("auto", tmp_path), *_parts(seed=3), extra_state={"s": restored})
    assert restored.value == 1


def test_trainer_resume_from_interrupted_save_continues_from_the_last_good_one(tmp_path):
    tr, coef = _trainer(tmp_path, steps=4, every=2, save_final=False)
    tr.fit(until_step=2)
    good = latest_checkpoint(tmp_path)
    tr.train_step([next(tr.loader), next(tr.loader)])

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed during save")

    coef.state_dict = crash
    with pytest.raises(KeyboardInterrupt):
        tr.save()
    again, again_coef = _trainer(tmp_path, steps=4, every=2)
    assert again.load(resolve_resume("auto", tmp_path)) == 2 == again.step
    assert again_coef.calls == 4  # two steps of two micro-batches, as saved at step 2
    assert resolve_resume("auto", tmp_path) == good


def test_trainer_refuses_a_checkpoint_without_engine_or_scheduler_state(tmp_path):
    """Neither the engine state nor (as before the engine existed) a top-level LR schedule: refused.
    (A checkpoint of the previous format resumes: test_checkpoint_resume.py.)"""
    model, opt, _, loader = _parts()
    path = save_checkpoint(tmp_path, 1, model, opt, None, loader)
    tr = Trainer(TinyLM(), StatefulLoader(), TrainConfig(dtype="fp32", out_dir=str(tmp_path)),
                 console=Console(file=io.StringIO()))
    with pytest.raises(CheckpointError, match="holds no LR-scheduler state"):
        tr.load(path)
    # and the reverse: a Trainer checkpoint has no separate scheduler state to load
    tr.engine.step = 1
    saved = tr.save()
    with pytest.raises(CheckpointError, match="holds no LR-scheduler state"):
        load_checkpoint(saved, *_parts(), extra_state={"engine": tr.engine})


def test_bf16_compute_copies_follow_a_checkpoint_load(tmp_path):
    """train.weight_cast = "per_step" through save and load: the loaded run's forward (bf16 copies
    swapped in) equals the saving run's."""
    def bf16_trainer(seed):
        torch.manual_seed(seed)
        return Trainer(TinyLM(), StatefulLoader(), TrainConfig(steps=4, dtype="bf16", out_dir=str(tmp_path)),
                       OptimConfig(lr=1e-2), console=Console(file=io.StringIO()))

    a = bf16_trainer(0)
    assert a.compute_weights is not None
    for _ in range(2):
        a.train_step([next(a.loader)])
    path = a.save()
    b = bf16_trainer(1)
    b.load(path)
    mbs = [next(StatefulLoader(seed=3))]
    assert torch.equal(b.engine.forward(mbs)[0].logits, a.engine.forward(mbs)[0].logits)
    assert b.engine.state_dict() == a.engine.state_dict()
