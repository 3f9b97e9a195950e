"""`[eval]`: held-out loss every N steps equals a float64 recomputation with transformers on the
exported weights; a split holds documents out of training; the plot, the console and (with
`tracking.tensorboard`) the TensorBoard events show it."""
from __future__ import annotations

import importlib.util
import io
import math
from pathlib import Path

import pytest
import torch
from rich.console import Console

from cli_helpers import metric_rows

EVAL = ["eval.every_steps=2", "eval.split=0.1", "eval.max_tokens=200", "checkpoint.every_steps=0"]


def _float64_eval_loss(hf_dir: Path, batches: list[dict]) -> tuple[float, int]:
    """Σ CE / Σ label tokens over every document of `batches`, transformers in float64."""
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float64, experts_implementation="eager").eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            cu = b["cu_seqlens"].tolist()
            for s, e in zip(cu[:-1], cu[1:]):
                logits = hf(b["input_ids"][s:e][None]).logits[0]
                labels = b["labels"][s:e]
                keep = labels != -100
                total += float(torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum"))
                count += int(keep.sum())
    return total / count, count


def test_eval_loss_equals_a_float64_recomputation(tiny_run: Path, tmp_path: Path):
    from xt.cli.config import load_xt_config
    from xt.cli.train import run_train
    from xt.core.engine.report import loss_figure
    from xt.data import build_dataset, build_eval_batches, build_loader, split_dataset

    out = io.StringIO()
    tb = importlib.util.find_spec("tensorboard") is not None
    run_train(tiny_run, EVAL + ["sample.max_new_tokens=0", f"tracking.tensorboard={str(tb).lower()}"],
              console=Console(file=out, width=300))
    rows = metric_rows(tmp_path / "run")
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    cfg = load_xt_config(tiny_run, EVAL)
    held = build_eval_batches(cfg.data, cfg.eval)
    want, tokens = _float64_eval_loss(tmp_path / "run" / "hf", held.batches)  # the weights after step 4
    assert evals[-1]["eval_tokens"] == tokens == held.num_tokens
    assert evals[-1]["eval_loss"] == pytest.approx(want, rel=1e-5)
    assert evals[-1]["eval_ppl"] == pytest.approx(math.exp(evals[-1]["eval_loss"]), rel=1e-12)
    assert sum(b["input_ids"].numel() for b in held.batches) <= 200
    assert f"eval: {tokens} held-out label tokens every 2 steps" in out.getvalue()
    assert f"eval_loss {evals[0]['eval_loss']:.4f}" in out.getvalue()

    # the split: 4 of the 40 documents are held out, and the training stream never holds them
    full = build_dataset(cfg.data)
    train, eval_ds = split_dataset(full, 0.1, cfg.data.seed)
    assert (train.num_documents, eval_ds.num_documents) == (36, 4)
    docs = lambda ds: {tuple(ds.tokens[ds.doc_offsets[d]:ds.doc_offsets[d + 1]].tolist()) for d in range(ds.num_documents)}
    assert docs(train).isdisjoint(docs(eval_ds)) and len(docs(train) | docs(eval_ds)) == 40
    assert build_loader(cfg.data, eval_split=0.1).dataset.num_documents == 36

    labels = [l.get_label() for l in loss_figure(rows).axes[0].get_lines()]
    assert labels == ["loss (token-mean CE)", "eval_loss (held out)"]
    if tb:
        _check_tensorboard(tmp_path / "run", rows)


def _check_tensorboard(run: Path, rows: list[dict]) -> None:
    """The event files hold metrics.jsonl's numbers (as float32) at their steps; lists are skipped."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "aux_loss", "grad_norm", "lr", "tokens_per_s", "eval_loss", "eval_ppl"} <= tags
    assert "expert_load" not in tags
    for tag in ("loss", "grad_norm", "lr", "num_tokens", "eval_loss"):
        want = [(r["step"], r[tag]) for r in rows if tag in r]
        got = acc.Scalars(tag)
        assert [e.step for e in got] == [s for s, _ in want]
        assert [e.value for e in got] == pytest.approx([v for _, v in want], rel=1e-6)


def test_eval_needs_held_out_data(tiny_run: Path):
    from xt.cli.config import load_xt_config
    from xt.core.config import ConfigError
    with pytest.raises(ConfigError, match="eval.every_steps.*needs held-out data"):
        load_xt_config(tiny_run, ["eval.every_steps=5"])
    with pytest.raises(ConfigError, match="eval.every_steps.*held-out data is set"):
        load_xt_config(tiny_run, ["eval.split=0.1"])
