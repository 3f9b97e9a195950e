"""`xt train` runs every zoo architecture from its examples/ config for a few CPU steps; the full-size
example configs (Kimi K2, gpt-oss-20b) and DeepSeek-V3 build with their published parameter counts,
and the Kimi K2 example is the structure the scaled-down parity test checks."""
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
            "--set", "sample.max_new_tokens=0", "--set", "checkpoint.hf_export=false", "--set", "checkpoint.save_final=false"]
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
    if example.startswith(("deepseek", "kimi")):  # the engine ran the aux-loss-free bias update
        assert all(len(r["expert_load_max_violation"]) >= 1 for r in rows)


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


def test_full_size_configs_have_the_published_parameter_counts():
    """Built on the meta device: DeepSeek-V3 (examples/deepseek_v3.toml) has 671B parameters and 37B activated per token (its
    report, arXiv:2412.19437, main model without MTP); Kimi K2 (examples/kimi_k2.toml) 1T total,
    32B activated (Moonshot's model card). Activated here = non-embedding incl. LM head, top-k experts."""
    import torch

    from xt.models.deepseek_v3 import DeepseekV3ForCausalLM

    ds = DeepseekV3Config.from_hf(tomllib.loads((EXAMPLES / "deepseek_v3.toml").read_text())["model"]["config"],
                                  mtp_layers=0)  # the published 671B count is the main model
    k2 = DeepseekV3Config.from_hf(tomllib.loads((EXAMPLES / "kimi_k2.toml").read_text())["model"]["config"])
    counts = {}
    for name, cfg in (("deepseek_v3", ds), ("kimi_k2", k2)):
        with torch.device("meta"):
            m = DeepseekV3ForCausalLM(cfg)
        counts[name] = (sum(p.numel() for p in m.parameters()) / 1e9, m.active_params() / 1e9)
    assert 670.5 < counts["deepseek_v3"][0] < 671.5 and 36 < counts["deepseek_v3"][1] < 38
    assert 1000 < counts["kimi_k2"][0] < 1040 and 31 < counts["kimi_k2"][1] < 33


def test_gpt_oss_20b_example_has_the_published_parameter_counts():
    """gpt-oss model card: gpt-oss-20b has 20.9B parameters, 3.6B active per token."""
    import torch

    from xt.models.gpt_oss import GptOssConfig, GptOssForCausalLM

    cfg = GptOssConfig.from_hf(tomllib.loads((EXAMPLES / "gpt_oss_20b.toml").read_text())["model"]["config"])
    assert cfg.layer_types[:2] == ["sliding_attention", "full_attention"] and cfg.rope_parameters["factor"] == 32.0
    with torch.device("meta"):
        m = GptOssForCausalLM(cfg)
    assert 20.8 < sum(p.numel() for p in m.parameters()) / 1e9 < 21.0
    assert 3.55 < m.active_params() / 1e9 < 3.65
