"""Qwen3Config from HF config dicts: field mapping, both rope forms, errors naming the field."""
from __future__ import annotations

import msgspec
import pytest

from qwen3_helpers import tiny_hf_config
from xt.models import ConfigError, config_from_hf
from xt.models.qwen3 import Qwen3Config

BASE = dict(architectures=["Qwen3MoeForCausalLM"], vocab_size=50, hidden_size=16, intermediate_size=24,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=4, num_experts=4,
            num_experts_per_tok=2, moe_intermediate_size=8)


@pytest.mark.parametrize("moe", [False, True])
def test_from_transformers_config_dict(moe):
    hf = tiny_hf_config(moe, tied=True)
    d = hf.to_dict()
    c = config_from_hf(d)
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings"):
        assert getattr(c, name) == getattr(hf, name), name
    assert c.rope_theta == hf.rope_parameters["rope_theta"]
    assert c.model_type == hf.model_type
    if moe:
        assert c.num_experts == hf.num_local_experts and c.num_experts_per_tok == hf.num_experts_per_tok
        assert c.moe_intermediate_size == hf.moe_intermediate_size and c.norm_topk_prob == hf.norm_topk_prob
        assert c.router_aux_loss_coef == hf.router_aux_loss_coef
    else:
        assert c.num_experts == 0 and not c.is_moe


def test_to_hf_dict_is_read_by_transformers():
    from transformers import AutoConfig

    c = config_from_hf(dict(BASE, rope_theta=5e5, tie_word_embeddings=True, mlp_only_layers=[1]))
    hf = AutoConfig.for_model(**{k: v for k, v in c.to_hf_dict().items() if k != "architectures"})
    assert hf.model_type == "qwen3_moe"
    assert hf.num_local_experts == 4 and hf.mlp_only_layers == [1] and hf.tie_word_embeddings
    assert hf.rope_parameters["rope_theta"] == 5e5
    assert config_from_hf(c.to_hf_dict()) == c


def test_rope_forms_and_aliases():
    old = config_from_hf(dict(BASE, rope_theta=1e6))
    new = config_from_hf(dict(BASE, rope_parameters={"rope_type": "default", "rope_theta": 1e6}))
    assert old.rope_theta == new.rope_theta == 1e6
    scaled = config_from_hf(dict(BASE, rope_theta=1e4, rope_scaling={"type": "linear", "factor": 2.0}))
    assert scaled.rope_parameters == {"rope_type": "linear", "factor": 2.0}
    alias = dict(BASE)
    alias["num_local_experts"] = alias.pop("num_experts")
    assert config_from_hf(alias).num_experts == 4
    by_type = {k: v for k, v in BASE.items() if k != "architectures"} | {"model_type": "qwen3_moe"}
    assert config_from_hf(by_type).is_moe


def test_unknown_hf_fields_ignored_but_strict_struct_rejects_them():
    c = config_from_hf(dict(BASE, output_router_logits=True, some_future_field=3, transformers_version="9"))
    assert c.num_experts == 4
    with pytest.raises(msgspec.ValidationError, match="some_future_field"):
        msgspec.convert({**{k: v for k, v in BASE.items() if k != "architectures"}, "some_future_field": 1},
                        Qwen3Config)


@pytest.mark.parametrize("field,value", [
    ("hidden_size", 0), ("vocab_size", "many"), ("num_key_value_heads", 3), ("head_dim", 5),
    ("num_experts_per_tok", 5), ("moe_intermediate_size", 0), ("mlp_only_layers", [7]),
    ("router_aux_loss_coef", -1.0), ("router_z_loss_coef", -0.1), ("hidden_act", "gelu"),
    ("rms_norm_eps", 0.0), ("use_sliding_window", True), ("rope_parameters", {"rope_type": "nope"}),
])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ConfigError) as err:
        config_from_hf(dict(BASE, **{field: value}))
    name = "rope_type" if field == "rope_parameters" else field
    assert name in str(err.value)


def test_unknown_architecture_lists_known():
    with pytest.raises(ConfigError, match="Qwen3MoeForCausalLM"):
        config_from_hf({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
