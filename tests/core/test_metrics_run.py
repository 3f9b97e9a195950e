"""A whole `Trainer.fit`: metrics.jsonl values against independent computations, log lines,
loss-curve PNG, HF-export hook, bf16 autocast, loader exhaustion, non-finite gradients."""
import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from xt.core.config import CheckpointConfig, OptimConfig, ScheduleConfig, TrainConfig
from xt.core.engine import Trainer, effective_seq_len, lr_factor, mfu, read_metrics

from xtcore_tiny import IGNORE, StatefulLoader, TinyLM

torch.set_num_threads(1)


def _fit(tmp_path, steps=4, micro=2, dtype="fp32", loader=None, export_hf=None, model=None,
         peak=0.5, log_every=2, terminal=False):
    torch.manual_seed(0)
    model = model or TinyLM()
    init = copy.deepcopy(model)
    out = io.StringIO()
    tr = Trainer(model, loader or StatefulLoader(),
                 TrainConfig(steps=steps, micro_batches_per_step=micro, out_dir=str(tmp_path),
                             dtype=dtype, log_every=log_every, peak_tflops=peak, max_grad_norm=0.0),
                 OptimConfig(lr=1e-2), ScheduleConfig(warmup_steps=1, decay="linear"),
                 CheckpointConfig(save_final=False), export_hf=export_hf,
                 console=Console(file=out, force_terminal=terminal, width=200))
    return tr, tr.fit(), init, out.getvalue()


def test_metrics_jsonl_values(tmp_path):
    tr, res, init, printed = _fit(tmp_path)
    rows = read_metrics(res.metrics_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and res.metrics == rows[-1]
    expected_keys = {"loss", "aux_loss", "grad_norm", "lr", "tokens_per_s", "mfu",
                     "max_memory_gib", "num_tokens", "loss_tokens", "h_norm", "first_two"}
    assert expected_keys <= set(rows[0])

    # Step 1 recomputed independently: float64 copy of the initial model, same two batches.
    ref_loader = StatefulLoader()
    mbs = [next(ref_loader), next(ref_loader)]
    ref = init.double()
    outs = [ref(**mb) for mb in mbs]
    labels = torch.cat([mb["labels"] for mb in mbs])
    logits = torch.cat([o.logits for o in outs])
    loss = F.cross_entropy(logits, labels, ignore_index=IGNORE)
    loss.backward()
    loss = loss.detach()
    grad_norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in ref.parameters()))
    r = rows[0]
    assert r["loss"] == pytest.approx(float(loss), rel=1e-6)
    assert r["grad_norm"] == pytest.approx(grad_norm, rel=1e-5)
    assert r["aux_loss"] is None
    assert r["num_tokens"] == sum(mb["input_ids"].numel() for mb in mbs)
    assert r["loss_tokens"] == int((labels != IGNORE).sum())
    lens = torch.cat([mb["cu_seqlens"].diff() for mb in mbs]).double()
    assert r["seq_len"] == pytest.approx(float((lens**2).sum() / lens.sum()))
    h_norm = sum(float(o.metrics["h_norm"]) for o in outs) / 2
    assert r["h_norm"] == pytest.approx(h_norm, rel=1e-5)
    assert len(r["first_two"]) == 2
    for row in rows:
        assert row["lr"] == pytest.approx(1e-2 * lr_factor(row["step"] - 1, 4, tr.schedule_cfg))
        fpt = tr.model.flops_per_token(round(row["seq_len"]))
        assert row["mfu"] == pytest.approx(fpt * row["tokens_per_s"] / 0.5e12, rel=1e-9)
        assert row["tokens_per_s"] == pytest.approx(row["num_tokens"] / row["step_time_s"])
        assert row["max_memory_gib"] > 0.01  # peak RSS of a torch process

    # a line every log_every steps, not on the others
    lines = [ln for ln in printed.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in lines] == ["2/4", "4/4"]
    assert f"loss {rows[1]['loss']:.4f}" in lines[0]


def test_progress_bar_on_a_terminal(tmp_path):
    _, res, _, printed = _fit(tmp_path, steps=3, log_every=3, terminal=True)
    assert "3/3" in printed and "train" in printed  # the rich bar (M of N column)
    assert f"loss {res.metrics['loss']:.4f}" in printed


def test_loss_curve_png(tmp_path):
    _, res, _, _ = _fit(tmp_path, steps=3)
    from matplotlib.image import imread

    assert res.plot_path == tmp_path / "loss.png"
    with open(res.plot_path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img = imread(res.plot_path)
    assert img.shape[:2] == (400, 700)  # figsize 7x4 inches at 100 dpi
    assert float(img[..., :3].std()) > 0.01  # something was drawn


def test_hf_export_hook_called_with_final_model(tmp_path):
    calls = []
    _, res, _, _ = _fit(tmp_path, steps=2, export_hf=lambda m, p: calls.append((m, p)))
    assert len(calls) == 1 and calls[0][1] == tmp_path / "hf" == res.hf_path
    assert isinstance(calls[0][0], TinyLM)


def test_bf16_autocast_close_to_fp32(tmp_path):
    _, r32, _, _ = _fit(tmp_path / "fp32", steps=2)
    _, r16, _, _ = _fit(tmp_path / "bf16", steps=2, dtype="bf16")
    a = [m["loss"] for m in read_metrics(r32.metrics_path)]
    b = [m["loss"] for m in read_metrics(r16.metrics_path)]
    assert a != b  # bf16 matmuls really ran
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-2 * abs(x)


def test_loader_exhaustion_stops_early(tmp_path):
    tr, res, _, printed = _fit(tmp_path, steps=5, micro=2, loader=StatefulLoader(limit=5))
    assert res.stopped_early and res.step == 2  # the half step with batch 5 is dropped
    assert "loader exhausted" in printed


def test_non_finite_gradient_raises_and_skips_update(tmp_path):
    model = TinyLM()
    with torch.no_grad():
        model.mix.weight[0, 0] = float("nan")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(FloatingPointError, match="step 1"):
        _fit(tmp_path, model=model)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) or torch.isnan(before[n]).any(), n


def test_effective_seq_len_and_mfu_formula():
    cu = torch.tensor([0, 2, 7, 8], dtype=torch.int32)
    assert effective_seq_len([{"cu_seqlens": cu, "input_ids": torch.zeros(8)}]) == (4 + 25 + 1) / 8
    assert effective_seq_len([{"input_ids": torch.zeros(3, 16)}]) == 16
    assert mfu(1e9, 1e3, None) is None
    assert mfu(6e9, 2e4, 989.0, world_size=2) == pytest.approx(6e9 * 2e4 / (2 * 989e12))
