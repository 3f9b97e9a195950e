"""``optim.impl = "fused_bf16_refresh"`` (`xt.kernels.optim.AdamWRefresh`: AdamW that writes the bf16
compute copies in its step) against torch's fused AdamW with the separate re-cast, on a tiny
Qwen3-MoE under bf16 autocast with ``weight_cast = "per_step"``, 2 steps x 2 micro-batches, CPU.

Exact: after every step each copy is the master's bf16 cast bit for bit, the engine's separate
re-cast pass is not run, and step 1's loss is the same (same weights). The two optimizers round
float32 differently (torch's fused kernel uses double scalars), ~1e-7 relative per update, and a
master that close to a bf16 rounding boundary can give a copy one bf16 step apart, so step 2's
loss and the distance the weights moved are compared within 1e-5 (measured: loss equal, weights
6e-8): far below what a wrong update (a missing bias correction is a 3x error at step 1) gives.
A checkpointed run resumes bit for bit.
"""
from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console

from xt.core.config import CheckpointConfig, OptimConfig, ScheduleConfig, TrainConfig
from xt.core.engine import Engine, Trainer, build_optimizer, read_metrics
from xt.core.engine.compute_weights import ComputeWeights
from xt.core.engine.precision import Precision
from xt.kernels.optim import AdamWRefresh
from test_zoo_weight_cast import _Loader, _model
from zoo_helpers import pack, random_docs, rel_err

BF16 = Precision(name="bf16", autocast_dtype=torch.bfloat16, reason="bf16 (test)")


def _run(impl: str, max_norm: float, monkeypatch):
    model = _model("qwen3_moe", "cpu")
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    engine = Engine(model, build_optimizer(model, OptimConfig(lr=1e-2, impl=impl)), precision=BF16,
                    max_grad_norm=max_norm)
    recasts = []
    monkeypatch.setattr(ComputeWeights, "refresh", lambda self, f=ComputeWeights.refresh: (recasts.append(1), f(self)))
    batches = [pack(random_docs(lengths, seed=s)) for s, lengths in enumerate([[20, 12], [7, 25], [32], [16, 16]])]
    losses, norms = [], []
    for step in range(2):
        losses.append(float(engine.forward_backward(batches[2 * step:2 * step + 2]).loss))
        norms.append(engine.optim_step().grad_norm)
        for master, copy in engine.compute_weights.pairs:
            assert torch.equal(copy, master.detach().to(torch.bfloat16))
    monkeypatch.undo()
    return engine, losses, norms, start, {n: p.detach().clone() for n, p in model.named_parameters()}, recasts


@pytest.mark.parametrize("max_norm", [0.05, 0.0], ids=["clipped", "unclipped"])
def test_refresh_optimizer_trains_like_torch_fused_adamw(max_norm, monkeypatch):
    ref, ref_loss, ref_norm, start, ref_w, _ = _run("fused", max_norm, monkeypatch)
    new, loss, norm, _, new_w, recasts = _run("fused_bf16_refresh", max_norm, monkeypatch)
    assert isinstance(new.optimizer, AdamWRefresh) and not isinstance(ref.optimizer, AdamWRefresh)
    assert recasts == [], "the engine re-cast the copies although the optimizer wrote them"
    assert loss[0] == ref_loss[0] and norm[0] == ref_norm[0]
    assert loss[1] == pytest.approx(ref_loss[1], rel=1e-5)
    if max_norm:
        assert ref_norm[0] > max_norm  # clipping was active
    for name, w in ref_w.items():
        assert new_w[name].dtype == torch.float32
        assert rel_err(new_w[name] - start[name], w - start[name]) < 1e-5, name


def test_refresh_optimizer_resumes_bit_for_bit(tmp_path):
    """2 steps, checkpoint, a fresh trainer resumes for 2 more == 4 straight steps (bf16, CPU): the
    state (torch's keys, CPU step count) goes through DCP and the copies are re-cast on load."""
    batches = [pack(random_docs(lengths, seed=s)) for s, lengths in
               enumerate([[20, 12], [7, 25], [32], [16, 16], [5, 27], [30, 2], [9, 9], [18]])]

    def trainer(out):
        train = TrainConfig(steps=4, micro_batches_per_step=2, dtype="bf16", out_dir=str(out), log_every=100,
                            max_grad_norm=0.05)
        return Trainer(_model("qwen3_moe", "cpu"), _Loader(batches), train,
                       OptimConfig(lr=1e-2, impl="fused_bf16_refresh"), ScheduleConfig(warmup_steps=1),
                       CheckpointConfig(every_steps=2, hf_export=False, save_final=False),
                       console=Console(file=io.StringIO()))

    full = trainer(tmp_path / "full")
    full.fit()
    first = trainer(tmp_path / "split")
    first.fit(until_step=2)
    second = trainer(tmp_path / "split")
    assert isinstance(second.engine.optimizer, AdamWRefresh)
    second.fit(resume="auto")
    want = read_metrics(tmp_path / "full" / "metrics.jsonl")
    got = read_metrics(tmp_path / "split" / "metrics.jsonl")
    assert [m["loss"] for m in got] == [m["loss"] for m in want]
    for (name, p), q in zip(full.model.named_parameters(), second.model.parameters()):
        assert torch.equal(p, q), name
