"""Llama (HF ``LlamaForCausalLM``); importing registers it with :mod:`xt.models.registry`."""
from xt.models.llama.config import LlamaConfig
from xt.models.llama.model import LlamaForCausalLM
from xt.models.llama.state_dict import from_hf, hf_to_xt, xt_to_hf


def _register() -> None:
    from xt.models.common.expert_keys import plain_rows
    from xt.models.registry import ModelSpec, register_model

    register_model(ModelSpec(
        name="llama", architectures=("LlamaForCausalLM",), model_types=("llama",), config_cls=LlamaConfig,
        model_cls=lambda config, attn_backend="auto": LlamaForCausalLM(config, attn_backend=attn_backend),
        to_hf=xt_to_hf, from_hf=from_hf, hf_rows=plain_rows))


_register()
__all__ = ["LlamaConfig", "LlamaForCausalLM", "hf_to_xt", "xt_to_hf"]
