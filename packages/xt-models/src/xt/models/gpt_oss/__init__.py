"""GPT-OSS (HF ``GptOssForCausalLM``); importing registers it with :mod:`xt.models.registry`."""
from xt.models.gpt_oss.config import GptOssConfig
from xt.models.common.sinks_attention import set_sinks_backend
from xt.models.gpt_oss.model import GptOssForCausalLM
from xt.models.gpt_oss.state_dict import dequantize_mxfp4, from_hf, hf_rows, hf_to_xt, xt_to_hf


def _register() -> None:
    from xt.models.registry import ModelSpec, register_model

    register_model(ModelSpec(
        name="gpt_oss", architectures=("GptOssForCausalLM",), model_types=("gpt_oss",), config_cls=GptOssConfig,
        model_cls=lambda config, attn_backend="auto": set_sinks_backend(GptOssForCausalLM(config), attn_backend),
        to_hf=xt_to_hf, from_hf=from_hf, hf_rows=hf_rows))


_register()
__all__ = ["GptOssConfig", "GptOssForCausalLM", "dequantize_mxfp4", "hf_to_xt", "xt_to_hf"]
