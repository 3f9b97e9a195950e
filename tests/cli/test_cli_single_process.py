"""`xt train` on one process (no torchrun): the banner says which precision and layout it uses, and
`[parallel]` settings take effect there (activation checkpointing, FSDP2 options at world size 1).

The FSDP2 runs are in a subprocess (they create a process group, which would outlive the run in
this process), and so are the AVX2 runs (their environment must be set before torch starts), each
group in one interpreter (`xt_runs`); the plain and activation-checkpointing runs are the same
command in this process (`xt_invoke`).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from xt.cli.step_time_text import step_time_line

from cli_helpers import xt_invoke, xt_runs

QUICK = ["--set", "train.steps=2", "--set", "sample.max_new_tokens=0", "--set", "checkpoint.hf_export=false",
         "--set", "checkpoint.every_steps=0", "--set", "checkpoint.save_final=false",
         "--set", "model.config.router_aux_loss_coef=0.0"]  # no checkpoint: only the resumed run needs one
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}  # a CPU without bf16 instructions


def _args(config: Path, out: Path, *sets: str) -> list[str]:
    """`xt train CONFIG` with QUICK and `sets`, run folder `out`."""
    return ["train", str(config), *QUICK, "--set", f"train.out_dir='{out}'", *sets]


def _result(r: subprocess.CompletedProcess, out: Path) -> tuple[str, list[dict]]:
    """(stdout + stderr, the metrics records of run folder `out`) of a finished `xt train`."""
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return r.stdout + r.stderr, rows


def test_auto_dtype_on_a_cpu_without_bf16_runs_fp32(tiny_run: Path, tmp_path: Path):
    """`auto` on an AVX2-only CPU trains in fp32 and says why; explicit bf16 warns with the slowdown
    (one step: emulated bf16 steps are slow, and step 1 is the one compared). The three runs share
    one AVX2 interpreter."""
    runs = {"auto": ["--set", "train.dtype='auto'"], "bf16": ["--set", "train.dtype='bf16'", "--set", "train.steps=1"],
            "fp32": ["--set", "train.dtype='fp32'"]}
    done = xt_runs([_args(tiny_run, tmp_path / name, *sets) for name, sets in runs.items()], env=AVX2_ENV)
    (log, rows), (log16, rows16), (_, rows32) = (_result(r, tmp_path / name) for r, name in zip(done, runs))
    assert "precision: train.dtype = 'auto': fp32, because this CPU has no native bf16" in log
    assert "layout: single process" in log and "Traceback" not in log
    assert len(rows16) == 1
    assert log16.count("bf16 matmuls are emulated on this CPU") == 1 and "x slower than in fp32" in log16
    assert [r["loss"] for r in rows] == [r["loss"] for r in rows32]  # auto = fp32 here, bit for bit
    assert rows16[0]["loss"] != rows32[0]["loss"]  # bf16 did run in bf16


def test_parallel_settings_apply_on_one_process(tiny_run: Path, tmp_path: Path):
    """Activation checkpointing (recompute: same losses) and FSDP2 with bf16 parameters at world
    size 1 (bf16 compute: close, not equal), each said in the banner; the checkpoint resumes (the
    FSDP2 run and its resumption share one interpreter)."""
    assert "WORLD_SIZE" not in os.environ
    _, plain = _result(xt_invoke(*_args(tiny_run, tmp_path / "plain")), tmp_path / "plain")
    log_ac, ac = _result(xt_invoke(*_args(tiny_run, tmp_path / "ac", "--set", "parallel.activation_checkpointing=1.0")),
                         tmp_path / "ac")
    assert "layout: single process; activation checkpointing on 2/2 layers [0, 1]" in log_ac
    assert [r["loss"] for r in ac] == [r["loss"] for r in plain]
    assert step_time_line(ac) in log_ac and "(too few steps for a median)" in log_ac  # 2 steps: no median
    mp_sets = ["--set", "parallel.param_dtype='bfloat16'"]
    first, again = xt_runs([_args(tiny_run, tmp_path / "mp", *mp_sets, "--set", "checkpoint.save_final=true"),
                            _args(tiny_run, tmp_path / "mp", *mp_sets, "--set", "train.steps=3", "--resume", "auto")])
    log_mp, mp = _result(first, tmp_path / "mp")
    assert "FSDP2 at world size 1 for param_dtype=bf16" in log_mp  # torch's spelling, stored as XT's
    mp = mp[:2]  # the resumed run appended step 3
    assert all(abs(a["loss"] - b["loss"]) < 0.05 for a, b in zip(mp, plain)) and mp[0]["loss"] != plain[0]["loss"]
    log_r, _ = _result(again, tmp_path / "mp")
    assert "resumed from" in log_r and "step-2" in log_r
    assert "(one step: no warm-up step to tell apart)" in log_r and "0.0s above it" not in log_r  # step 3 only
