"""`train.max_minutes` stops a run with a checkpoint and the export, and that HF folder of `xt train`
(and of `xt convert`) is complete: transformers alone, offline and
from that folder only, loads its tokenizer (with the chat template) and model and generates the
tokens XT's own greedy decoding gives; every file is readable by others (umask mode, not 0600)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from rich.console import Console

from xt.cli.main import cli

EXPECTED = {"chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
            "tokenizer.json", "tokenizer_config.json"}

# runs in a fresh interpreter with no network and no cache: only the folder is available
HF_ONLY = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
hf = sys.argv[1]
tok = AutoTokenizer.from_pretrained(hf)
model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
enc = tok("Record 3: the quick", return_tensors="pt")
out = model.generate(**enc, max_new_tokens=6)
chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
print(json.dumps({"prompt": enc["input_ids"][0].tolist(), "new": out[0, enc["input_ids"].shape[1]:].tolist(),
                  "chat": chat, "vocab": len(tok), "eos": model.generation_config.eos_token_id}))
"""


def _hf_only(folder: Path, tmp: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp / "no_hf_home")}
    r = subprocess.run([sys.executable, "-c", HF_ONLY, str(folder)], capture_output=True, text=True,
                       cwd=tmp, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_hf_export_generates_with_transformers_alone(tiny_run: Path, tmp_path: Path):
    from xt.cli.train import run_train
    from xt.data import load_tokenizer
    from xt.models import from_pretrained, generate

    # a time budget of ~0 s, spent after the first step: it stops with a checkpoint and the export
    out = io.StringIO()
    result = run_train(tiny_run, ["train.max_minutes=1e-9", "checkpoint.every_steps=0", "sample.max_new_tokens=0"],
                       console=Console(file=out, width=300))
    assert result.out_of_time and result.interrupted is None and result.step == 1
    assert result.checkpoint == tmp_path / "run" / "checkpoints" / "step-1" and (result.checkpoint / "meta.json").is_file()
    assert "stopped by train.max_minutes = 1e-09 after step 1 of 4" in out.getvalue()
    hf = result.hf_path
    assert hf == tmp_path / "run" / "hf"
    assert {p.name for p in hf.iterdir()} == EXPECTED
    mask = os.umask(0)
    os.umask(mask)
    for p in hf.iterdir():
        assert p.stat().st_mode & 0o777 == 0o666 & ~mask, (p.name, oct(p.stat().st_mode))
    gen = json.loads((hf / "generation_config.json").read_text())
    assert gen == {"eos_token_id": 151645, "pad_token_id": 151645, "do_sample": False}, gen

    got = _hf_only(hf, tmp_path)
    tok = load_tokenizer("qwen3")
    assert got["prompt"] == tok.encode("Record 3: the quick", add_special_tokens=False)
    assert got["vocab"] == len(tok) and got["eos"] == 151645
    assert got["chat"] == tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                  add_generation_prompt=True)
    ours = generate(from_pretrained(hf), [got["prompt"]], 6, eos_token_id=151645)[0]
    assert got["new"][:len(ours)] == ours and len(ours) >= 1

    # xt convert of the run's checkpoint, the config taken from the run folder: the same complete folder
    dst = tmp_path / "converted"
    r = CliRunner().invoke(cli, ["convert", str(result.checkpoint), str(dst)])
    assert r.exit_code == 0, r.output
    assert f"xt convert: wrote {dst} from {result.checkpoint}" in r.output
    assert {p.name for p in dst.iterdir()} == EXPECTED
    for name in EXPECTED - {"model.safetensors"}:
        assert (dst / name).read_bytes() == (hf / name).read_bytes(), name


def test_hf_max_shard_size_splits_train_and_convert_exports(tiny_run: Path, tmp_path: Path):
    """``checkpoint.hf_max_shard_size = "20KB"``: `xt train`'s export and `xt convert`'s (the run's
    config.toml) are several files of at most 20 KB (a larger tensor alone), the index maps every
    key to the file that holds it with the right total, and transformers loads the folder with XT's
    logits."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from xt.cli.train import run_train
    from xt.models import from_pretrained

    result = run_train(tiny_run, ["train.steps=1", "checkpoint.every_steps=0", "sample.max_new_tokens=0",
                                  "checkpoint.hf_max_shard_size=20KB"], console=Console(file=io.StringIO()))
    dst = tmp_path / "converted"
    r = CliRunner().invoke(cli, ["convert", str(result.checkpoint), str(dst)])
    assert r.exit_code == 0, r.output
    ids = torch.tensor([[5, 17, 300, 151000, 9, 42]])
    for folder in (result.hf_path, dst):
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        files = sorted(p.name for p in folder.glob("*.safetensors"))
        assert len(files) >= 3 and sorted(set(index["weight_map"].values())) == files, files
        total = 0
        for name in files:
            with safe_open(folder / name, "pt") as f:
                keys = list(f.keys())
                sizes = [f.get_tensor(k).nbytes for k in keys]
            assert sorted(keys) == sorted(k for k, v in index["weight_map"].items() if v == name)
            assert sum(sizes) <= 20_000 or len(keys) == 1, (name, sizes)
            total += sum(sizes)
        assert index["metadata"]["total_size"] == total
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        ours = from_pretrained(folder).eval()
        with torch.no_grad():
            torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=1e-5, rtol=1e-5)
    assert (dst / "model.safetensors.index.json").read_text() == (result.hf_path / "model.safetensors.index.json").read_text()
