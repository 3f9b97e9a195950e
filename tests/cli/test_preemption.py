"""Preemption-safe `xt train`: SIGTERM mid-run saves a checkpoint and exits 75, `--resume auto`
then gives the losses of an uninterrupted run and says when it found nothing (`train.max_minutes`:
tests/cli/test_hf_export.py).

The tiny config of conftest.py, fp32. The schedule is constant after one warmup step, so the
interrupted run (train.steps = 100000, stopped by the signal at some step N) and the reference
(train.steps = N + 2) use the same learning rates.
"""
from __future__ import annotations

import io
import signal
from pathlib import Path

from rich.console import Console

from cli_helpers import QUICK, metric_rows, set_args, signal_mid_run

CONSTANT = QUICK + ["schedule.decay='constant'", "checkpoint.every_steps=0"]


def test_sigterm_then_resume_auto_equals_an_uninterrupted_run(tiny_run: Path, tmp_path: Path):
    run = tmp_path / "run"
    code, out, err = signal_mid_run(["train", str(tiny_run), *set_args(CONSTANT + ["train.steps=100000"])],
                                    run / "metrics.jsonl", signal.SIGTERM)  # after step 1: mid-run
    assert code == 75, out + err
    assert "Traceback" not in out + err
    n = metric_rows(run)[-1]["step"]
    ckpt = run / "checkpoints" / f"step-{n}"
    assert (ckpt / "meta.json").is_file() and sorted(p.name for p in (run / "checkpoints").iterdir()) == [ckpt.name]
    assert f"stopped by SIGTERM after step {n} of 100000; checkpoint {ckpt}" in out, out
    assert f"continue with: xt train {tiny_run}" in out and "--resume auto" in out
    assert not (run / "hf").exists()  # an interrupted run is not exported

    from xt.cli.train import run_train  # the rest in this process: the same code, no interpreter start-up
    out = io.StringIO()
    run_train(tiny_run, CONSTANT + [f"train.steps={n + 2}", "checkpoint.save_final=false"], resume="auto",
              console=Console(file=out, width=300))
    assert f"resumed from {ckpt} at step {n}" in out.getvalue()
    ref, out = tmp_path / "ref", io.StringIO()
    run_train(tiny_run, CONSTANT + [f"train.steps={n + 2}", f"train.out_dir='{ref}'", "checkpoint.save_final=false"],
              resume="auto",
              console=Console(file=out, width=300))
    assert f"resume auto: no complete checkpoint in {ref / 'checkpoints'}; starting a fresh run at step 1" in out.getvalue()
    got = {row["step"]: row["loss"] for row in metric_rows(run)}  # the last record of a step wins
    want = [row["loss"] for row in metric_rows(ref)]
    assert len(want) == n + 2 and [got[s] for s in range(1, n + 3)] == want
