"""XT models: Qwen3 / Qwen3-MoE (more families to come), HF-compatible configs and checkpoints.

Entry points: :func:`build_model`, :func:`from_pretrained`, :func:`save_pretrained`,
:func:`generate`, :func:`config_from_hf`.
"""
from xt.models.common.hf_config import ConfigError
from xt.models.common.output import CausalLMOutput
from xt.models.generate import generate
from xt.models.hf_io import from_pretrained, save_pretrained
from xt.models.registry import ModelSpec, build_model, config_from_hf, register_model

__all__ = ["build_model", "config_from_hf", "from_pretrained", "save_pretrained", "generate", "ModelSpec",
           "register_model", "CausalLMOutput", "ConfigError"]
