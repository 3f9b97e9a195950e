"""`xt train` runs every zoo architecture from its examples/ config for a few CPU steps, and the
Kimi K2 example config is the structure the scaled-down parity test checks."""
from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest

import xt.models.deepseek_v3  # noqa: F401  (registers the zoo families with xt.models.registry)
import xt.models.gpt_oss  # noqa: F401
import xt.models.llama  # noqa: F401
from xt.models.deepseek_v3 import DeepseekV3Config
from zoo_helpers import kimi_k2_scaled_hf_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.slow
@pytest.mark.parametrize("example", ["llama_tiny", "gpt_oss_tiny", "deepseek_v3_tiny", "kimi_k2_tiny"])
def test_xt_train_runs_example_on_cpu(tmp_path, example):
    from click.testing import CliRunner

    from xt.cli.main import cli

    out = tmp_path / "run"
    args = ["train", str(EXAMPLES / f"{example}.toml"), "--set", "train.steps=2", "--set", f"train.out_dir={out}",
            "--set", "data.tokens_per_micro_batch=128", "--set", "data.max_documents=20",
            "--set", "sample.max_new_tokens=0", "--set", "checkpoint.hf_export=false"]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    vocab = tomllib.loads((EXAMPLES / f"{example}.toml").read_text())["model"]["config"]["vocab_size"]
    assert abs(rows[0]["loss"] - math.log(vocab)) < 1.0  # random init: cross-entropy near ln(V)
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    if example.startswith(("gpt_oss", "deepseek", "kimi")):
        assert rows[0]["aux_loss"] is not None and len(rows[0]["expert_load"]) >= 1
    if example == "deepseek_v3_tiny":
        assert math.isfinite(rows[0]["mtp_loss"])


def test_kimi_k2_example_is_the_tested_structure():
    d = tomllib.loads((EXAMPLES / "kimi_k2.toml").read_text())["model"]["config"]
    full = DeepseekV3Config.from_hf(d)
    assert (full.n_routed_experts, full.num_experts_per_tok, full.n_shared_experts, full.num_attention_heads,
            full.first_k_dense_replace) == (384, 8, 1, 64, 1)
    small = kimi_k2_scaled_hf_config()
    for k in ("n_group", "topk_group", "first_k_dense_replace", "n_shared_experts", "num_experts_per_tok",
              "routed_scaling_factor", "norm_topk_prob", "rope_interleave"):
        assert getattr(small, k) == getattr(full, k), k
    for k in ("rope_type", "factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "rope_theta"):
        assert small.rope_parameters[k] == full.rope_parameters[k], k
