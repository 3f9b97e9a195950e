"""`xt train` under torchrun (gloo, CPU): the distributed layouts follow the single-process curve.

World 2 with EP 2 (experts split over the two data-parallel ranks) and world 2 with SP 2 (one
sequence split over both ranks), each against one process that sees the same global batch.
fp32 and router aux loss off, so the loss is exactly split-invariant (the per-micro-batch aux loss
is not).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.dist


def _run(args: list[str], nproc: int, tmp: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHELASTIC_ERROR_FILE": str(tmp / "elastic.json")}
    if nproc == 1:
        cmd = [sys.executable, "-m", "xt.cli.main", "train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "xt.cli.main", "train", *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def _losses(out: Path) -> list[float]:
    return [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("layout,micro", [(["parallel.ep_size=2"], 2), (["parallel.sp_size=2"], 1)])
def test_torchrun_layout_matches_single_process(tiny_run: Path, tmp_path: Path, layout, micro):
    common = ["--set", "train.steps=3", "--set", "model.config.router_aux_loss_coef=0.0",
              "--set", "checkpoint.hf_export=false", "--set", "sample.max_new_tokens=0",
              "--set", "train.micro_batches_per_step=1"]
    single = tmp_path / "single"
    _run([str(tiny_run), *common, "--set", f"train.micro_batches_per_step={micro}",
          "--set", f"train.out_dir='{single}'"], 1, tmp_path)
    dist = tmp_path / "dist"
    extra = [a for kv in layout for a in ("--set", kv)]
    _run([str(tiny_run), *common, *extra, "--set", f"train.out_dir='{dist}'"], 2, tmp_path)
    a, b = _losses(single), _losses(dist)
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert abs(x - y) / abs(x) < 1e-5, (a, b)
    assert b[-1] < b[0]  # and it learns
