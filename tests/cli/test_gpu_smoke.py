"""CUDA smoke test of the main job: 5 bf16 steps of the demo model on real Shakespeare text.

Run on a GPU machine (``pytest -m gpu``); skipped without CUDA.
"""
from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_demo_trains_five_bf16_steps_on_cuda(tmp_path):
    from xt.cli.train import run_train
    out = tmp_path / "run"
    res = run_train("examples/qwen3_moe_shakespeare.toml",
                    [f"train.out_dir='{out}'", "train.steps=5", "train.log_every=1",
                     "schedule.warmup_steps=1", "checkpoint.every_steps=0", "sample.max_new_tokens=8"])
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert res.step == 5 and len(rows) == 5
    losses = [r["loss"] for r in rows]
    print("GPU smoke losses", losses, "tokens/s", [round(r["tokens_per_s"]) for r in rows],
          "max_memory_gib", rows[-1]["max_memory_gib"])
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.5, losses
    assert rows[-1]["max_memory_gib"] > 0  # CUDA memory was used: the run was on the GPU
