"""Assembly as a library: a run built from config sections without xt.cli trains like `xt train` on
the same config, and its HF export loads in transformers with the trained model's logits.

The library side is `library_run.py` (xt.cli blocked in its process); `xt train` runs in this
process (`xt_invoke`), except in the FSDP2 case, which creates a world-size-1 process group that
would outlive the run (there a subprocess, as test_cli_single_process.py does). ``fsdp1`` takes the export path that gathers the parameters
(`xt.parallel.exporter` under a `ParallelDistContext`), with the tiny model's tied embeddings.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import xt_invoke

HERE = Path(__file__).resolve().parent
COMMON = ["train.steps=2", "checkpoint.every_steps=0", "checkpoint.save_final=false", "sample.max_new_tokens=0"]


def _env() -> dict:
    """This environment without the torchrun variables, and with this process's torch thread count
    (a conftest may have lowered it): the in-process `xt train` must compute as the library run."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": str(torch.get_num_threads())}


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("layout", [[], pytest.param(["parallel.reshard_after_forward=false"], marks=pytest.mark.soak)],
                         ids=["plain", "fsdp1"])  # fsdp1: soak (~22 s; the layout itself is covered in tests/parallel)
def test_library_run_trains_and_exports_like_xt_train(tiny_run: Path, tmp_path: Path, layout):
    from transformers import AutoModelForCausalLM

    sets = COMMON + layout
    lib, cli = tmp_path / "lib", tmp_path / "cli"
    r = subprocess.run([sys.executable, str(HERE / "library_run.py"), str(tiny_run), str(tmp_path / "logits.pt"),
                        *sets, f"train.out_dir='{lib}'"], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    args = [a for s in sets + [f"train.out_dir='{cli}'"] for a in ("--set", s)]
    if layout:
        r = subprocess.run([sys.executable, "-m", "xt.cli.main", "train", str(tiny_run), *args],
                           capture_output=True, text=True, env=_env(), timeout=300)
    else:
        assert "WORLD_SIZE" not in os.environ
        r = xt_invoke("train", str(tiny_run), *args)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    if layout:
        assert "FSDP2 at world size 1" in r.stdout

    # The same two steps: losses and gradient norms of the library run are those of `xt train`.
    got, ref = _rows(lib), _rows(cli)
    assert [x["step"] for x in got] == [1, 2]
    assert [(x["loss"], x["grad_norm"]) for x in got] == [(x["loss"], x["grad_norm"]) for x in ref]

    # Its HF export is the one `xt train` writes, and transformers gives the trained model's logits.
    ours, theirs = load_file(lib / "hf" / "model.safetensors"), load_file(cli / "hf" / "model.safetensors")
    assert sorted(ours) == sorted(theirs) and all(ours[k].equal(theirs[k]) for k in ours)
    probe = torch.load(tmp_path / "logits.pt")
    trained = probe["logits"]
    hf = AutoModelForCausalLM.from_pretrained(lib / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        logits = hf(torch.tensor([probe["ids"]])).logits[0].float()
    assert logits.shape == trained.shape
    assert (logits - trained).norm() / trained.norm() < 1e-5
