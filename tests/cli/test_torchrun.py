"""`xt train` under torchrun (gloo, CPU): the distributed layouts follow the single-process curve.

World 2 with EP 2 (experts split over the two data-parallel ranks) and world 2 with SP 2 (one
sequence split over both ranks), each against one process that sees the same global batch (that
one in this process: no interpreter start-up). The EP
case starts both runs from an HF folder (``model.init_from``: on two ranks each reads only its rows)
and compares their HF exports too (streamed: each rank writes its files).
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

from cli_helpers import xt_invoke

pytestmark = pytest.mark.dist


def _run(args: list[str], nproc: int, tmp: Path) -> None:
    """`xt train ARGS`: on one process in this process (`xt_invoke`: no process group at world
    size 1 without FSDP2 options), else under torchrun with `nproc` ranks."""
    if nproc == 1:
        assert "WORLD_SIZE" not in os.environ
        r = xt_invoke("train", *args)
    else:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHELASTIC_ERROR_FILE": str(tmp / "elastic.json")}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "xt.cli.main", "train", *args]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def _losses(out: Path) -> list[float]:
    return [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("layout,micro,init", [(["parallel.ep_size=2"], 2, True), (["parallel.sp_size=2"], 1, False)])
def test_torchrun_layout_matches_single_process(tiny_run: Path, tmp_path: Path, layout, micro, init):
    import tomllib

    import torch

    from xt.models import build_model, from_pretrained, save_pretrained
    sets = ["train.steps=3", f"checkpoint.hf_export={'true' if init else 'false'}", "sample.max_new_tokens=0",
            "train.micro_batches_per_step=1", "checkpoint.save_final=false", "model.config.router_aux_loss_coef=0.0"]
    if init:  # the aux loss off in the saved config.json instead
        cfg = {**tomllib.loads(tiny_run.read_text())["model"]["config"], "router_aux_loss_coef": 0.0}
        torch.manual_seed(7)
        save_pretrained(build_model(cfg), tmp_path / "init", max_shard_size=2_000_000)
        sets[-1:] = ["model.config={}", f"model.init_from='{tmp_path / 'init'}'"]
    common = [a for kv in sets for a in ("--set", kv)]
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
    if init:  # AdamW in fp32: ~zero gradients make 1e-5 per element meaningless (test_parallel_equivalence)
        one, two = from_pretrained(single / "hf"), from_pretrained(dist / "hf")
        for n, p in one.named_parameters():
            assert (two.get_parameter(n) - p).norm() <= 1e-4 * p.norm(), n
