"""The parallel plan (docs/architecture.md, Parallelism): every XT family states where its layers,
MoE blocks and core attentions are, DeepSeek-V3's MTP depths included; models without a plan are
discovered by attribute names, with a warning; a plan that does not fit names the field. Single
process, no process group."""
from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from xt.parallel import ParallelConfig
from xt.parallel.discover import discover_plan, model_sizes, plan_for
from xt.parallel.single import parallelize_single

pytest.importorskip("xt.models.registry")

ROOT = Path(__file__).resolve().parents[2]


def _example(name: str, **over) -> dict:
    cfg = tomllib.loads((ROOT / "examples" / name).read_text())["model"]["config"]
    return {**cfg, "vocab_size": 64, **over}


FAMILIES = {
    "qwen3_moe": _example("qwen3_moe_shakespeare.toml", num_hidden_layers=2),
    "llama": _example("llama_tiny.toml"),
    "gpt_oss": _example("gpt_oss_tiny.toml"),
    "deepseek_v3_mtp": _example("deepseek_v3_tiny.toml", mtp_layers=2),
}


def _build(cfg: dict):
    from xt.models.registry import build_model
    torch.manual_seed(0)
    return build_model(dict(cfg))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_states_a_plan_that_fits(family):
    """The plan covers every decoder layer, every MoE block (each experts module, router and
    dispatcher of the model) and every core attention, and its sizes are what the CLI's layout
    check reads from the config before the model exists."""
    from xt.models import config_from_hf
    from xt.models.common.moe import MoEBlock
    model = _build(FAMILIES[family])
    assert callable(model.parallel_plan)
    plan = plan_for(model)
    assert plan.source == "model"
    names = {id(m): n for n, m in model.named_modules()}
    blocks = sorted(n for n, m in model.named_modules() if isinstance(m, MoEBlock))
    assert sorted(b.block for b in plan.moe_blocks) == blocks
    for b in plan.moe_blocks:
        block = model.get_submodule(b.block)
        assert (names[id(block.experts)], names[id(block.gate)], names[id(block.dispatcher)]) == (
            b.experts, b.router, b.dispatcher)
    cores = sorted(n for n, _ in model.named_modules() if n.endswith("self_attn.core_attention"))
    assert sorted(plan.attention_cores) == cores and not plan.layers_without_attention_core()
    assert plan.sizes() == model_sizes(SimpleNamespace(config=config_from_hf(FAMILIES[family])))


def test_deepseek_plan_includes_the_mtp_depths():
    """Discovery would stop at ``model.model.layers``; the model's plan lists the MTP depths as
    decoder layers with their MoE blocks, so EP slices their experts too."""
    model = _build(FAMILIES["deepseek_v3_mtp"])
    plan = plan_for(model)
    assert plan.decoder_layers[-2:] == ("mtp.0", "mtp.1") and plan.mtp_layers == 2
    assert {"mtp.0.mlp.experts", "mtp.1.mlp.experts"} <= {b.experts for b in plan.moe_blocks}
    old = discover_plan(model)  # what parallelize found before the plan: main layers only
    assert "mtp.0" not in old.decoder_layers and not any(b.experts.startswith("mtp.") for b in old.moe_blocks)


def test_single_process_keys_follow_the_plan():
    """capacity_factor replaces the MTP depths' dispatchers too; AC picks from all decoder layers."""
    from xt.parallel.checkpointing import AC_ATTR
    from xt.parallel.expert_parallel import AllToAllDispatcher
    model = _build(FAMILIES["deepseek_v3_mtp"])
    parallelize_single(model, ParallelConfig(capacity_factor=2.0, activation_checkpointing=1.0), device_type="cpu")
    assert isinstance(model.mtp[1].mlp.dispatcher, AllToAllDispatcher)
    assert all(getattr(layer, AC_ATTR, False) for layer in [*model.model.layers, *model.mtp])


def test_models_without_a_plan_are_discovered_and_the_log_says_so(caplog):
    from parallel_toy_moe import ToyConfig, build_toy
    model = build_toy(ToyConfig(), seed=0, skew="none")
    assert getattr(model, "parallel_plan", None) is None
    with caplog.at_level(logging.WARNING, logger="xt.parallel.discover"):
        plan = plan_for(model)
    assert plan.source == "discovered"
    assert plan.decoder_layers == ("model.layers.0", "model.layers.1")
    assert [b.dispatcher for b in plan.moe_blocks] == ["model.layers.0.mlp.dispatcher", "model.layers.1.mlp.dispatcher"]
    assert plan.attention_cores == ("model.layers.0.self_attn.core_attention", "model.layers.1.self_attn.core_attention")
    assert "ToyMoEForCausalLM has no parallel_plan()" in caplog.text and "not parallelised" in caplog.text


@pytest.mark.parametrize("plan,needle", [
    ({"decoder_layers": ["model.layers.0"], "moe_block": []}, "unknown field(s) ['moe_block']"),
    ({"moe_blocks": []}, "decoder_layers is missing"),
    ({"decoder_layers": "model.layers.0"}, "decoder_layers must be a list of module paths"),
    ({"decoder_layers": ["model.layers.7"]}, "decoder_layers[0] = 'model.layers.7' is not a submodule"),
    ({"decoder_layers": ["model.layers.0"], "num_experts": 4,
      "moe_blocks": [{"block": "model.layers.0.mlp", "experts": "model.layers.0.mlp.expert",
                      "dispatcher": "model.layers.0.mlp.dispatcher"}]},
     "moe_blocks[0].experts = 'model.layers.0.mlp.expert' is not a submodule"),
    ({"decoder_layers": ["model.layers.0"], "moe_blocks": [{"block": "model.layers.0.mlp"}]},
     "moe_blocks[0].experts must be a module path"),
    ({"decoder_layers": ["model.layers.0"], "moe_blocks": [{"block": "a", "experts": "b", "dispatcher": "c"}]},
     "moe_blocks lists 1 block(s) but num_experts is None"),
    ({"decoder_layers": ["model.layers.0"], "num_attention_heads": -1}, "num_attention_heads must be a non-negative int"),
])
def test_a_plan_that_does_not_fit_names_the_field(plan, needle):
    from parallel_toy_moe import ToyConfig, build_toy
    model = build_toy(ToyConfig(), seed=0, skew="none")
    with pytest.raises(ValueError) as err:
        plan_for(model, plan)
    assert needle in str(err.value) and "parallelize(plan=...)" in str(err.value)
