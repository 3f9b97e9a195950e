"""Resume semantics: changed settings are applied with a printed summary or refused with the
reason; a run resumes on another number of ranks (1 -> 2 -> 1 on gloo) with the losses and token
counts of an uninterrupted run.

The schedule is constant after one warmup step, so changing `train.steps` between invocations
leaves the learning rates as in one run of the final length.
"""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from cli_helpers import QUICK, metric_rows, set_args, xt_invoke

CONSTANT = QUICK + ["schedule.decay='constant'", "checkpoint.every_steps=0"]


def test_changed_lr_and_steps_apply_with_a_summary_and_regrouping_is_refused(tiny_run: Path, tmp_path: Path):
    from xt.cli.train import run_train
    run = tmp_path / "run"
    run_train(tiny_run, CONSTANT + ["train.steps=2"], console=Console(file=io.StringIO()))
    out = io.StringIO()
    run_train(tiny_run, CONSTANT + ["train.steps=3", "optim.lr=0.02", "train.seed=5"], resume="auto",
              console=Console(file=out, width=300))
    text = out.getvalue()
    assert f"resumed from {run / 'checkpoints' / 'step-2'} at step 2" in text
    assert "optim.lr: 0.01 -> 0.02 (applied from the next step)" in text
    assert "train.steps: 2 -> 3 (the LR schedule now spans the new total)" in text
    assert "train.seed: 0 -> 5 (no effect: the checkpoint's RNG state is restored)" in text
    rows = metric_rows(run)
    assert [r["lr"] for r in rows] == [0.01, 0.01, 0.02]  # the logged lr is the one the step used

    r = xt_invoke("train", str(tiny_run), "--resume", "auto",
                  *set_args(CONSTANT + ["train.steps=4", "optim.decay_1d_params=true"]))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "optim.decay_1d_params changed from False to True" in r.stderr and "regroups the parameters" in r.stderr


def _torchrun(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHELASTIC_ERROR_FILE": str(tmp / "elastic.json")}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "xt.cli.main", "train", *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.dist
def test_resume_on_another_rank_count_equals_one_run(tiny_run: Path, tmp_path: Path):
    """1 process (2 micro-batches a step) -> 2 ranks under torchrun (FSDP2, 1 each) -> 1 process:
    every step sees the same global micro-batches as the uninterrupted single run (token counts
    equal exactly), and the losses agree to fp32 rounding; so does the held-out loss, whichever
    layout computed it. Aux loss off: it is not split-invariant."""
    from xt.cli.train import run_train
    base = CONSTANT + ["model.config.router_aux_loss_coef=0.0", "eval.every_steps=2", "eval.split=0.1"]
    quiet = Console(file=io.StringIO())
    run_train(tiny_run, base + ["train.steps=2"], console=quiet)
    r = _torchrun([str(tiny_run), "--resume", "auto",
                   *set_args(base + ["train.steps=4", "train.micro_batches_per_step=1"])], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "saved on 1 rank, resumed on 2: model and optimizer resharded (DCP)" in r.stdout
    # the banner: the model's parameters in all, and this rank's FSDP2 shard of them
    total, local = (float(x) for x in re.search(r"([\d.]+)M parameters \(([\d.]+)M on this rank\)", r.stdout).groups())
    out = io.StringIO()
    run_train(tiny_run, base + ["train.steps=6"], resume="auto", console=Console(file=out, width=300))
    assert "saved on 2 ranks, resumed on 1" in out.getvalue()
    assert f"{total:.1f}M parameters ({total:.1f}M on this rank)" in out.getvalue()
    assert abs(local - total / 2) <= 0.1  # half of every sharded parameter (rounding: 0.1M)
    ref = tmp_path / "ref"
    run_train(tiny_run, base + ["train.steps=6", f"train.out_dir='{ref}'", "checkpoint.save_final=false"], console=quiet)
    got = {row["step"]: row for row in metric_rows(tmp_path / "run")}
    want = metric_rows(ref)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    for w in want:
        g = got[w["step"]]
        assert (g["num_tokens"], g["loss_tokens"]) == (w["num_tokens"], w["loss_tokens"]), w["step"]
        assert abs(g["loss"] - w["loss"]) <= 1e-5 * abs(w["loss"]), (w["step"], g["loss"], w["loss"])
    # held-out loss (steps 2 and 6 on one process, step 4 on two FSDP2 ranks): the single run's
    evals = [(w["step"], w["eval_loss"], w["eval_tokens"]) for w in want if "eval_loss" in w]
    assert [s for s, _, _ in evals] == [2, 4, 6]
    for s, loss, tokens in evals:
        assert got[s]["eval_tokens"] == tokens and abs(got[s]["eval_loss"] - loss) <= 1e-5 * loss, s
