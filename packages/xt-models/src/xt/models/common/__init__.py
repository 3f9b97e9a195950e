"""Building blocks shared by XT model families (norm, RoPE, attention, MLP, MoE, HF I/O helpers)."""
from xt.models.common.attention import Attention
from xt.models.common.core_attention import CoreAttention, document_causal_mask
from xt.models.common.dispatch import LocalDispatcher
from xt.models.common.experts import GroupedExperts
from xt.models.common.hf_config import ConfigError
from xt.models.common.mlp import SwiGLUMLP
from xt.models.common.moe import MoEBlock
from xt.models.common.norm import RMSNorm
from xt.models.common.output import CausalLMOutput, pack_inputs
from xt.models.common.rope import ROPE_INIT_FUNCTIONS, RotaryEmbedding, apply_rotary, register_rope_type
from xt.models.common.router import RouterOutput, RouterStats, TopKRouter, load_balancing_loss, z_loss

__all__ = ["Attention", "CoreAttention", "document_causal_mask", "LocalDispatcher", "GroupedExperts",
           "ConfigError", "SwiGLUMLP", "MoEBlock", "RMSNorm", "CausalLMOutput", "pack_inputs",
           "ROPE_INIT_FUNCTIONS", "RotaryEmbedding", "apply_rotary", "register_rope_type", "RouterOutput",
           "RouterStats", "TopKRouter", "load_balancing_loss", "z_loss"]
