"""`xt train` under torchrun (gloo, CPU): the distributed layouts follow the single-process curve.

World 2 with EP 2 (experts split over the two data-parallel ranks) and world 2 with SP 2 (one
sequence split over both ranks), each against one process that sees the same global batch (that
one in this process: no interpreter start-up). Both distributed runs are one torchrun launch: the
two ranks run the two `xt train` commands one after the other (`xt_commands.py --check`), one
start-up and rendezvous for both. The EP case starts both runs from an HF folder
(``model.init_from``: on two ranks each reads only its rows) and compares their HF exports too
(streamed: each rank writes its files).
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

from cli_helpers import XT_COMMANDS, xt_invoke

pytestmark = pytest.mark.dist

#: (name, layout, micro-batches a step of the one-process reference, start from an HF folder)
LAYOUTS = [("ep", ["parallel.ep_size=2"], 2, True), ("sp", ["parallel.sp_size=2"], 1, False)]


def _sets(items: list[str]) -> list[str]:
    return [a for kv in items for a in ("--set", kv)]


def _losses(out: Path) -> list[float]:
    return [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines()]


def test_torchrun_layouts_match_single_process(tiny_run: Path, tmp_path: Path):
    import tomllib

    import torch

    from xt.models import build_model, from_pretrained, save_pretrained
    assert "WORLD_SIZE" not in os.environ  # the references: one process, in this one
    jobs = []
    for name, layout, micro, init in LAYOUTS:
        sets = ["train.steps=3", f"checkpoint.hf_export={'true' if init else 'false'}", "sample.max_new_tokens=0",
                "train.micro_batches_per_step=1", "checkpoint.save_final=false", "model.config.router_aux_loss_coef=0.0"]
        if init:  # the aux loss off in the saved config.json instead
            cfg = {**tomllib.loads(tiny_run.read_text())["model"]["config"], "router_aux_loss_coef": 0.0}
            torch.manual_seed(7)
            save_pretrained(build_model(cfg), tmp_path / "init", max_shard_size=2_000_000)
            sets[-1:] = ["model.config={}", f"model.init_from='{tmp_path / 'init'}'"]
        single = tmp_path / f"{name}_single"
        r = xt_invoke("train", str(tiny_run), *_sets(sets + [f"train.micro_batches_per_step={micro}",
                                                             f"train.out_dir='{single}'"]))
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        jobs.append([["train", str(tiny_run), *_sets(sets + layout + [f"train.out_dir='{tmp_path / f'{name}_dist'}'"])],
                     {}])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHELASTIC_ERROR_FILE": str(tmp_path / "elastic.json")}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        str(XT_COMMANDS), "--check", json.dumps(jobs)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name, layout, micro, init in LAYOUTS:
        single, dist = tmp_path / f"{name}_single", tmp_path / f"{name}_dist"
        a, b = _losses(single), _losses(dist)
        assert len(a) == len(b) == 3, name
        for x, y in zip(a, b):
            assert abs(x - y) / abs(x) < 1e-5, (name, a, b)
        assert b[-1] < b[0], name  # and it learns
        if init:  # AdamW in fp32: ~zero gradients make 1e-5 per element meaningless (test_parallel_equivalence)
            one, two = from_pretrained(single / "hf"), from_pretrained(dist / "hf")
            for n, p in one.named_parameters():
                assert (two.get_parameter(n) - p).norm() <= 1e-4 * p.norm(), n
