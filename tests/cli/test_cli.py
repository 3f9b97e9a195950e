"""`xt train` / `xt convert` end to end on a tiny Qwen3-MoE, checked against transformers."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from xt.cli.main import cli
from xt.cli.config import load_xt_config
from xt.core.config import ConfigError


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(ids).logits.float()


def test_help_lists_commands():
    r = CliRunner().invoke(cli, ["--help"])
    assert r.exit_code == 0 and "train" in r.output and "convert" in r.output
    r = CliRunner().invoke(cli, ["train", "--help"])
    assert r.exit_code == 0 and "--resume" in r.output and "--set" in r.output


def test_config_errors_name_key_file_and_line(tiny_run: Path):
    text = tiny_run.read_text().replace("dtype = \"fp32\"", "dtype = \"fp16\"")
    bad = tiny_run.with_name("bad.toml")
    bad.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_xt_config(bad)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "fp16" in t)
    assert "train.dtype" in str(e.value) and f"bad.toml:{line}" in str(e.value) and "bf16" in str(e.value)
    r = CliRunner().invoke(cli, ["train", str(tiny_run), "--set", "optim.learning_rate=1"])
    assert r.exit_code != 0 and "optim.learning_rate" in r.output
    with pytest.raises(ConfigError, match="exactly one of model.config"):
        load_xt_config(tiny_run, ["model.init_from=somewhere"])


def test_train_export_resume_convert(tiny_run: Path, tmp_path: Path):
    from transformers import AutoModelForCausalLM
    from xt.cli.train import run_train
    from xt.models import from_pretrained

    full = run_train(tiny_run)
    run = tmp_path / "run"
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 and r["tokens_per_s"] > 0 for r in rows)

    # The HF export loads in transformers and gives our logits.
    ids = torch.tensor([[785, 3974, 13876, 38835, 34208, 916, 279]])
    hf = AutoModelForCausalLM.from_pretrained(run / "hf", dtype=torch.float32)
    ours = from_pretrained(run / "hf")
    ref = hf(ids).logits[0].float()
    got = _logits(ours, ids[0])
    assert (got - ref).norm() / ref.norm() < 1e-5

    # A run killed after step 2 and resumed with --resume auto repeats steps 3-4 exactly.
    killed = tmp_path / "killed"  # the run folder as it was after step 2 (no step-4, no export)
    shutil.copytree(run, killed, ignore=lambda d, names: [n for n in names if n in ("step-4", "hf")])
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step-2"]
    r = CliRunner().invoke(cli, ["train", str(tiny_run), "--set", f"train.out_dir='{killed}'",
                                 "--set", "checkpoint.hf_export=false", "--set", "checkpoint.every_steps=0",
                                 "--set", "checkpoint.save_final=false", "--resume", "auto"])
    assert r.exit_code == 0, r.output
    resumed = [json.loads(l) for l in (killed / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r["loss"] for r in resumed}  # the last record of each step wins
    assert resumed[-1]["step"] == 4
    for r in rows[2:]:
        assert by_step[r["step"]] == pytest.approx(r["loss"], rel=1e-6, abs=1e-7)

    # xt convert: XT checkpoint -> HF equals the export; HF -> XT weights feed model.init_from.
    hf2 = tmp_path / "hf2"
    r = CliRunner().invoke(cli, ["convert", str(run / "checkpoints" / "step-4"), str(hf2), "--config", str(tiny_run)])
    assert r.exit_code == 0, r.output
    assert torch.equal(_logits(from_pretrained(hf2), ids[0]), got)
    xtw = tmp_path / "xt_weights"
    r = CliRunner().invoke(cli, ["convert", str(run / "hf"), str(xtw)])
    assert r.exit_code == 0, r.output
    from xt.models import build_run_model
    cfg = load_xt_config(tiny_run, ["model.config={}", f"model.init_from='{xtw}'"])
    assert torch.equal(_logits(build_run_model(cfg.model, torch.device("cpu")), ids[0]), got)
    r = CliRunner().invoke(cli, ["convert", str(run / "hf"), str(xtw)])
    assert r.exit_code != 0 and "exists" in r.output


def test_console_script_runs(tiny_run: Path):
    exe = Path(sys.executable).with_name("xt")
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "train" in r.stdout


def test_unused_model_keys_are_reported(tiny_run: Path):
    from xt.models import unused_model_keys
    cfg = load_xt_config(tiny_run, ["model.config.num_expert=8", "model.config.transformers_version='5.0'"])
    assert unused_model_keys(cfg.model) == ["num_expert"]
    assert unused_model_keys(load_xt_config(tiny_run).model) == []


def test_invalid_parallel_layout_fails_before_any_work(tiny_run: Path, monkeypatch):
    """ep_size must divide num_experts (4) and the FSDP ranks: refused with the reason, no model built."""
    import xt.cli.train as train_mod
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setattr(train_mod, "run_model_source", lambda *a, **k: pytest.fail("model was built"))
    r = CliRunner().invoke(cli, ["train", str(tiny_run), "--set", "parallel.ep_size=3"])
    assert r.exit_code != 0 and "ep_size" in r.output and "num_experts" in r.output.replace("\n", " ")


def test_chat_sft_example_trains_on_assistant_tokens_only(tiny_run: Path, tmp_path: Path):
    """The SFT example's data section (chitchat, chat template) through `xt train`: every step's loss
    tokens are the assistant tokens of its batch, a strict subset of all tokens."""
    import tomllib
    from xt.cli.train import run_train
    from xt.data import DataConfig, build_loader

    ex = Path(__file__).resolve().parents[2] / "examples" / "qwen3_moe_chitchat_sft.toml"
    data = tomllib.loads(ex.read_text())["data"]
    assert data["source"] == "chitchat" and data["mode"] == "chat"
    out = tmp_path / "sft"
    sets = [f"data.{k}={v!r}".replace("'", '"') for k, v in data.items() if k != "paths"]
    sets += ["data.paths=[]", "data.tokens_per_micro_batch=256", "data.max_seq_len=256", "data.max_documents=30",
             f"train.out_dir='{out}'", "train.steps=2", "train.micro_batches_per_step=1",
             "checkpoint.hf_export=false", "checkpoint.save_final=false"]
    run_train(tiny_run, sets)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    ref = iter(build_loader(DataConfig(source="chitchat", mode="chat", tokenizer="qwen3", tokens_per_micro_batch=256,
                                       max_seq_len=256, max_documents=30, seed=data["seed"])))
    for r in rows:
        b = next(ref)
        assert r["loss_tokens"] == int((b["labels"] != -100).sum()) < r["num_tokens"] == b["input_ids"].numel()


def test_nonfinite_grad_skip_is_reported(tiny_run: Path, tmp_path: Path):
    """`train.nonfinite_grad = 'skip'` from the command line: an LR that blows the weights up gives
    NaN gradients from step 2 on; the run goes on (3 steps: two skips), counts the skips and says so."""
    run = tmp_path / "nan"
    r = CliRunner().invoke(cli, ["train", str(tiny_run), "--set", f"train.out_dir='{run}'", "--set", "train.steps=3",
                                 "--set", "train.nonfinite_grad='skip'", "--set", "optim.lr=1e30",
                                 "--set", "sample.max_new_tokens=0", "--set", "checkpoint.hf_export=false",
                                 "--set", "checkpoint.save_final=false"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["skipped_steps"] == 0 and rows[-1]["skipped_steps"] >= 1
    assert f"skipped {rows[-1]['skipped_steps']} optimizer steps with a non-finite gradient norm" in r.output
