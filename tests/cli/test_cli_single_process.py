"""`xt train` on one process (no torchrun): the banner says which precision and layout it uses, and
`[parallel]` settings take effect there (activation checkpointing, FSDP2 options at world size 1).

The FSDP2 runs are subprocesses (they create a process group, which would outlive the run in
this process), and so are the AVX2 runs (their environment must be set before torch starts); the
plain and activation-checkpointing runs are the same command in this process (`xt_invoke`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from xt.cli.step_time_text import step_time_line

from cli_helpers import xt_invoke

QUICK = ["--set", "train.steps=2", "--set", "sample.max_new_tokens=0", "--set", "checkpoint.hf_export=false",
         "--set", "checkpoint.every_steps=0", "--set", "model.config.router_aux_loss_coef=0.0"]
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}  # a CPU without bf16 instructions


def _train(config: Path, out: Path, *sets: str, env: dict | None = None, subprocess_run: bool = True
           ) -> tuple[str, list[dict]]:
    """`xt train CONFIG` with QUICK and `sets`, run folder `out` (a subprocess, or in this process
    with ``subprocess_run=False``); returns (its stdout + stderr, the metrics records)."""
    args = ["train", str(config), *QUICK, "--set", f"train.out_dir='{out}'", *sets]
    if subprocess_run:
        env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        r = subprocess.run([sys.executable, "-m", "xt.cli.main", *args], capture_output=True, text=True, env=env,
                           timeout=300)
    else:
        assert not env and "WORLD_SIZE" not in os.environ
        r = xt_invoke(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return r.stdout + r.stderr, rows


def test_auto_dtype_on_a_cpu_without_bf16_runs_fp32(tiny_run: Path, tmp_path: Path):
    """`auto` on an AVX2-only CPU trains in fp32 and says why; explicit bf16 warns with the slowdown
    (one step: emulated bf16 steps are slow, and step 1 is the one compared)."""
    log, rows = _train(tiny_run, tmp_path / "auto", "--set", "train.dtype='auto'", env=AVX2_ENV)
    assert "precision: train.dtype = 'auto': fp32, because this CPU has no native bf16" in log
    assert "layout: single process" in log and "Traceback" not in log
    log16, rows16 = _train(tiny_run, tmp_path / "bf16", "--set", "train.dtype='bf16'", "--set", "train.steps=1",
                           env=AVX2_ENV)
    assert len(rows16) == 1
    assert log16.count("bf16 matmuls are emulated on this CPU") == 1 and "x slower than in fp32" in log16
    _, rows32 = _train(tiny_run, tmp_path / "fp32", "--set", "train.dtype='fp32'", env=AVX2_ENV)
    assert [r["loss"] for r in rows] == [r["loss"] for r in rows32]  # auto = fp32 here, bit for bit
    assert rows16[0]["loss"] != rows32[0]["loss"]  # bf16 did run in bf16


def test_parallel_settings_apply_on_one_process(tiny_run: Path, tmp_path: Path):
    """Activation checkpointing (recompute: same losses) and FSDP2 with bf16 parameters at world
    size 1 (bf16 compute: close, not equal), each said in the banner; the checkpoint resumes."""
    _, plain = _train(tiny_run, tmp_path / "plain", subprocess_run=False)
    log_ac, ac = _train(tiny_run, tmp_path / "ac", "--set", "parallel.activation_checkpointing=1.0",
                        subprocess_run=False)
    assert "layout: single process; activation checkpointing on 2/2 layers [0, 1]" in log_ac
    assert [r["loss"] for r in ac] == [r["loss"] for r in plain]
    assert step_time_line(ac) in log_ac and "(too few steps for a median)" in log_ac  # 2 steps: no median
    log_mp, mp = _train(tiny_run, tmp_path / "mp", "--set", "parallel.param_dtype='bfloat16'")
    assert "FSDP2 at world size 1 for param_dtype=bf16" in log_mp  # torch's spelling, stored as XT's
    assert all(abs(a["loss"] - b["loss"]) < 0.05 for a, b in zip(mp, plain)) and mp[0]["loss"] != plain[0]["loss"]
    log_r, _ = _train(tiny_run, tmp_path / "mp", "--set", "parallel.param_dtype='bfloat16'", "--set",
                      "train.steps=3", "--resume", "auto")
    assert "resumed from" in log_r and "step-2" in log_r
    assert "(one step: no warm-up step to tell apart)" in log_r and "0.0s above it" not in log_r  # step 3 only
