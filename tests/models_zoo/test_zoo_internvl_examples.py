"""The vision-language examples: the tiny digits config trains through `xt train` (a frozen vision
tower stays bit-identical, the HF export loads in transformers with equal logits), and the
full-size InternVL3.5-8B / Intern-S1-shaped configs build on meta with their parameter counts."""
from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.slow
def test_xt_train_runs_the_digits_example(tmp_path):
    from click.testing import CliRunner
    from safetensors.torch import load_file
    from transformers import InternVLForConditionalGeneration

    from xt.cli.main import cli
    from xt.data.config import data_config_from_dict
    from xt.data.loader import build_loader
    from xt.models import build_model, from_pretrained

    out = tmp_path / "run"
    args = ["train", str(EXAMPLES / "internvl_tiny_digits.toml"), "--set", "train.steps=2", "--set", f"train.out_dir={out}",
            "--set", "data.tokens_per_micro_batch=128", "--set", "data.max_documents=40", "--set", "train.dtype='fp32'",
            "--set", "model.freeze=['vision_tower']", "--set", "optim.part_lr={projector = 1e-3}"]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and abs(rows[0]["loss"] - math.log(151936)) < 1.0
    # the frozen tower is the fresh one (same seed, same layout-invariant init), the rest moved
    d = tomllib.loads((EXAMPLES / "internvl_tiny_digits.toml").read_text())
    torch.manual_seed(0)
    fresh = build_model(d["model"]["config"]).state_dict()
    trained = from_pretrained(out / "hf")
    for k, v in trained.state_dict().items():
        assert torch.equal(v, fresh[k]) == k.startswith("model.vision_tower."), k
    # transformers reads the export and computes the same logits on a real packed micro-batch
    hf = InternVLForConditionalGeneration.from_pretrained(out / "hf").eval()
    cfg = data_config_from_dict({"source": "digits_vqa", "tokens_per_micro_batch": 128, "vision": d["data"]["vision"]})
    b = next(build_loader(cfg))
    cu = b["cu_seqlens"].tolist()
    with torch.no_grad():
        ours = trained.eval()(**{k: v for k, v in b.items() if k != "labels"}).logits
        n = 0
        for a, e in zip(cu, cu[1:]):
            k = int((b["input_ids"][a:e] == 151655).sum()) // d["data"]["vision"]["image_seq_length"]
            ref = hf(input_ids=b["input_ids"][a:e][None], pixel_values=b["pixel_values"][n:n + k]).logits[0]
            n += k
            assert float((ours[a:e] - ref).norm() / ref.norm()) <= 1e-5
    assert sorted(load_file(str(out / "hf" / "model.safetensors")))[0].startswith("language_model.")


@pytest.mark.parametrize("example,params,vision", [("internvl3_5_8b", 8.53e9, 0.304e9), ("intern_s1", 240.7e9, 5.54e9)])
def test_full_size_examples_build_with_their_sizes(example, params, vision):
    from xt.models import build_model

    d = tomllib.loads((EXAMPLES / f"{example}.toml").read_text())
    model = build_model(d["model"]["config"], device="meta")
    n = sum(p.numel() for p in model.parameters())
    v = sum(p.numel() for k, p in model.named_parameters() if k.startswith("model.vision_tower."))
    assert abs(n / params - 1) < 0.005 and abs(v / vision - 1) < 0.01, (n, v)
    assert d["data"]["vision"]["image_seq_length"] == model.config.image_seq_length == 256
