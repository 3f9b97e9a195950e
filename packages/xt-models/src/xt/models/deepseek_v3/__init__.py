"""DeepSeek-V3 / Kimi K2 (HF ``DeepseekV3ForCausalLM``); importing registers it with
:mod:`xt.models.registry` (Kimi K2 checkpoints use the same architecture name)."""
from xt.models.deepseek_v3.config import DeepseekV3Config
from xt.models.deepseek_v3.model import DeepseekV3ForCausalLM
from xt.models.deepseek_v3.mtp_depth import mtp_config_of_folder
from xt.models.deepseek_v3.state_dict import from_hf, hf_rows, hf_to_xt, xt_to_hf


def _register() -> None:
    from xt.models.registry import ModelSpec, register_model

    register_model(ModelSpec(
        name="deepseek_v3", architectures=("DeepseekV3ForCausalLM",), model_types=("deepseek_v3", "kimi_k2"),
        config_cls=DeepseekV3Config,
        model_cls=lambda config, attn_backend="auto": DeepseekV3ForCausalLM(config, attn_backend=attn_backend),
        to_hf=xt_to_hf, from_hf=from_hf, hf_rows=hf_rows, folder_config=mtp_config_of_folder))


_register()
__all__ = ["DeepseekV3Config", "DeepseekV3ForCausalLM", "hf_to_xt", "xt_to_hf"]
