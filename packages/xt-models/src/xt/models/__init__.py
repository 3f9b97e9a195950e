"""XT models: Qwen3 / Qwen3-MoE, Llama, GPT-OSS, DeepSeek-V3 / Kimi K2; HF-compatible configs and
checkpoints.

Entry points: :func:`build_model`, :func:`from_pretrained`, :func:`save_pretrained`,
:func:`generate` (batched KV-cache decoding, greedy or sampled), :func:`generate_no_cache` (one
prompt, re-runs the whole sequence each step: the simplest reference), :func:`config_from_hf`.
Bad model config fields raise :class:`ModelConfigError` (alias ``ConfigError``), an
``xt.core.config.ConfigError`` naming the field (``.field``).

A run's ``[model]`` section (:class:`ModelSection`) becomes a model through
:func:`build_run_model` (random init, or ``init_from`` an HF folder / XT weights, see
:mod:`xt.models.weights`); :func:`check_model_section` checks it first without building anything,
and :func:`unused_model_keys` lists fields the family does not read.
"""
from xt.models.common.hf_config import ConfigError, ModelConfigError
from xt.models.common.output import CausalLMOutput
from xt.models.common.generate import generate
from xt.models.generate_reference import generate as generate_no_cache
from xt.models.hf_io import from_pretrained, save_pretrained
from xt.models.hf_stream import iter_hf_buckets
from xt.models.registry import ModelSpec, build_model, config_from_hf, register_model
from xt.models.section import ModelSection, build_run_model, finish_run_model, run_model_source, section_config, unused_model_keys
from xt.models.section_check import check_model_section
from xt.models.weights import load_weights, save_xt_weights

__all__ = ["iter_hf_buckets", "build_model", "config_from_hf", "from_pretrained", "save_pretrained", "generate", "generate_no_cache", "ModelSpec",
           "register_model", "CausalLMOutput", "ConfigError", "ModelConfigError", "ModelSection", "build_run_model", "run_model_source", "finish_run_model",
           "section_config", "unused_model_keys", "check_model_section", "load_weights", "save_xt_weights"]
