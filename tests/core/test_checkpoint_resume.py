"""Checkpoints: N steps + resume + N steps == 2N steps; atomic saves; keep_last; resume paths."""
import io
import random

import pytest
import torch
from rich.console import Console

import xt.core.checkpoint.io as ckpt_io
from xt.core.checkpoint import (get_rng_state, latest_checkpoint, list_checkpoints, resolve_resume,
                                set_rng_state)
from xt.core.config import CheckpointConfig, OptimConfig, ScheduleConfig, TrainConfig
from xt.core.engine import Trainer, read_metrics

from xtcore_tiny import StatefulLoader, TinyLM

torch.set_num_threads(1)
N = 3


def _trainer(out_dir, steps=2 * N, every=N, keep_last=0, dropout=0.2):
    torch.manual_seed(123)  # model init (the Trainer re-seeds with train.seed on a fresh start)
    model = TinyLM(dropout=dropout)  # dropout: the RNG state matters for the losses
    train = TrainConfig(steps=steps, micro_batches_per_step=2, out_dir=str(out_dir), seed=5,
                        log_every=1, max_grad_norm=1.0, dtype="fp32")
    return Trainer(model, StatefulLoader(), train, OptimConfig(lr=3e-2, weight_decay=0.01),
                   ScheduleConfig(warmup_steps=2, decay="cosine"),
                   CheckpointConfig(every_steps=every, keep_last=keep_last, hf_export=False),
                   console=Console(file=io.StringIO()))


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_resume_gives_identical_losses(tmp_path):
    full = _trainer(tmp_path / "full")
    full.fit()
    ref = read_metrics(tmp_path / "full" / "metrics.jsonl")

    first = _trainer(tmp_path / "split")
    r1 = first.fit(until_step=N)
    assert r1.step == N and r1.checkpoint.name == f"step-{N}"
    served_first = list(first.loader.served)
    # A fresh process would rebuild everything from scratch; so do we (different init RNG too).
    torch.manual_seed(999)
    random.seed(999)
    second = _trainer(tmp_path / "split")
    r2 = second.fit(resume="auto")
    assert r2.resumed_from == r1.checkpoint and r2.step == 2 * N
    got = read_metrics(tmp_path / "split" / "metrics.jsonl")

    assert [m["step"] for m in got] == list(range(1, 2 * N + 1))
    assert [m["loss"] for m in got] == [m["loss"] for m in ref]  # bit-exact
    assert [m["lr"] for m in got] == [m["lr"] for m in ref]
    assert [m["grad_norm"] for m in got] == [m["grad_norm"] for m in ref]
    # the data continued where it stopped: batches 0..2N*2-1 once each
    assert served_first + second.loader.served == full.loader.served
    for name, p in _params(full.model).items():
        assert torch.equal(p, dict(second.model.named_parameters())[name].detach()), name
    # and dropout did matter: without restoring RNG the run differs
    other = _trainer(tmp_path / "split")
    other.load(r1.checkpoint)
    torch.manual_seed(0)
    m = other.train_step([next(other.loader), next(other.loader)])
    assert m["loss"] != ref[N]["loss"]


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    tr = _trainer(tmp_path, steps=4, every=2)
    tr.fit(until_step=2)
    good = latest_checkpoint(tmp_path)
    assert good.name == "step-2"
    at_step2 = _params(tr.model)
    tr.train_step([next(tr.loader), next(tr.loader)])

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(ckpt_io, "_write_trainer_state", crash)  # after the DCP files are written
    with pytest.raises(KeyboardInterrupt):
        tr.save()
    monkeypatch.undo()
    ckroot = tmp_path / "checkpoints"
    assert (ckroot / "step-3.tmp" / "model_optim" / ".metadata").exists()  # half-written
    assert not (ckroot / "step-3").exists()
    assert latest_checkpoint(tmp_path) == good == resolve_resume("auto", tmp_path)
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resolve_resume(ckroot / "step-3.tmp", tmp_path)

    again = _trainer(tmp_path, steps=4, every=2)
    assert again.load(resolve_resume("auto", tmp_path)) == 2
    for name, p in _params(again.model).items():
        assert torch.equal(p, at_step2[name]), name
    again.fit(resume=good)  # the next good save removes the leftover temp folder
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4]
    assert not (ckroot / "step-3.tmp").exists()


def test_keep_last_and_explicit_resume_errors(tmp_path):
    tr = _trainer(tmp_path, steps=5, every=1, keep_last=2)
    tr.fit()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 5]
    with pytest.raises(FileNotFoundError):
        resolve_resume(tmp_path / "checkpoints" / "step-1", tmp_path)
    assert resolve_resume("auto", tmp_path / "elsewhere") is None
    assert resolve_resume(None, tmp_path) is None
    with pytest.raises(FileExistsError, match="resume='auto'"):  # a fresh run would mix steps
        _trainer(tmp_path, steps=5).fit()


def test_resave_same_step_replaces_it(tmp_path):
    tr = _trainer(tmp_path, steps=2, every=0)
    tr.fit()
    first = latest_checkpoint(tmp_path)
    with torch.no_grad():
        tr.model.mix.bias.add_(1.0)
    assert tr.save() == first
    again = _trainer(tmp_path, steps=2)
    again.load(first)
    assert torch.equal(again.model.mix.bias, tr.model.mix.bias)


def test_rng_state_roundtrip():
    random.seed(1)
    torch.manual_seed(1)
    state = get_rng_state()
    a = (random.random(), torch.rand(3))
    set_rng_state(state)
    b = (random.random(), torch.rand(3))
    assert a[0] == b[0] and torch.equal(a[1], b[1])


def test_resume_from_a_checkpoint_written_before_the_engine_state(tmp_path, monkeypatch):
    """A checkpoint saved by the previous Trainer (step and LR schedule in trainer.pt, no named
    ``engine`` state) still resumes bit-exactly, so a run started before the update continues."""
    full = _trainer(tmp_path / "full")
    full.fit()
    ref = read_metrics(tmp_path / "full" / "metrics.jsonl")

    def old_save(self):  # the previous Trainer.save: scheduler at the top level, no extra state
        return ckpt_io.save_checkpoint(self.out_dir, self.step, self.model, self.optimizer, self.scheduler,
                                       self.loader, self.dist, self.ckpt_cfg.keep_last)

    monkeypatch.setattr(Trainer, "save", old_save)
    _trainer(tmp_path / "old").fit(until_step=N)
    monkeypatch.undo()
    torch.manual_seed(999)
    second = _trainer(tmp_path / "old")
    r2 = second.fit(resume="auto")
    assert r2.step == 2 * N and second.engine.step == 2 * N
    got = read_metrics(tmp_path / "old" / "metrics.jsonl")
    assert [m["loss"] for m in got] == [m["loss"] for m in ref]
    assert [m["lr"] for m in got] == [m["lr"] for m in ref]
