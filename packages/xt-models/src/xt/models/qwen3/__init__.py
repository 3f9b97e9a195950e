"""Qwen3 (dense) and Qwen3-MoE: config, model, HF key mapping; registers itself in the registry."""
from xt.models.common.expert_keys import plain_rows
from xt.models.qwen3 import state_dict
from xt.models.qwen3.config import Qwen3Config
from xt.models.qwen3.model import Qwen3DecoderLayer, Qwen3ForCausalLM, Qwen3Model
from xt.models.registry import ModelSpec, register_model

Qwen3MoeForCausalLM = Qwen3ForCausalLM  # one implementation serves both HF architectures

register_model(ModelSpec(
    name="qwen3",
    architectures=("Qwen3ForCausalLM", "Qwen3MoeForCausalLM"),
    model_types=("qwen3", "qwen3_moe"),
    config_cls=Qwen3Config,
    model_cls=Qwen3ForCausalLM,
    to_hf=state_dict.to_hf,
    from_hf=state_dict.from_hf,
    hf_rows=plain_rows,
))

__all__ = ["Qwen3Config", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "Qwen3Model", "Qwen3DecoderLayer"]
