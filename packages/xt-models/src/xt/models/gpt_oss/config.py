"""GPT-OSS configuration (HF ``GptOssForCausalLM`` ``config.json`` names).

Reference: OpenAI, "gpt-oss-120b & gpt-oss-20b Model Card" (2025): alternating banded (sliding
window 128) and dense attention, learned attention sinks, top-4 softmax-after-top-k routing, experts
with biases and a clamped SwiGLU (``alpha`` 1.702, ``limit`` 7), YaRN rope (factor 32).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import msgspec

from xt.models.common.zoo_config import HFConfigMixin, check_common, default_head_dim, hf_config_to_struct, read_hf_config

__all__ = ["GptOssConfig", "LAYER_TYPES"]

LAYER_TYPES = ("sliding_attention", "full_attention")


def _default_yarn() -> dict[str, Any]:
    return {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
            "original_max_position_embeddings": 4096, "rope_theta": 150000.0}


class GptOssConfig(HFConfigMixin, msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """GPT-OSS architecture (HF names).

    ``num_local_experts`` is E (also readable as :attr:`num_experts`), ``num_experts_per_tok`` K,
    ``intermediate_size`` the expert intermediate F; ``layer_types[i]`` is ``sliding_attention``
    (keys within ``sliding_window`` tokens, the query included) or ``full_attention`` and defaults to
    sliding on even layers; ``router_aux_loss_coef`` multiplies the Switch load-balancing loss
    (pooled over all layers, as HF computes it; 0 disables it).
    """

    HF_ARCHITECTURE: ClassVar[str] = "GptOssForCausalLM"
    HF_MODEL_TYPE: ClassVar[str] = "gpt_oss"

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_local_experts: int
    num_experts_per_tok: int = 4
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    sliding_window: int | None = 128
    layer_types: list[str] | None = None
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    max_position_embeddings: int = 131072
    rms_norm_eps: float = 1e-5
    rope_parameters: dict[str, Any] = msgspec.field(default_factory=_default_yarn)
    swiglu_alpha: float = 1.702
    swiglu_limit: float = 7.0
    router_aux_loss_coef: float = 0.0
    attention_bias: bool = True
    eos_token_id: int | list[int] | None = None

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = default_head_dim(self)
        if self.layer_types is None:
            self.layer_types = [LAYER_TYPES[(i + 1) % 2 == 0] for i in range(self.num_hidden_layers)]
        check_common(self)
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries, num_hidden_layers={self.num_hidden_layers}")
        bad = [t for t in self.layer_types if t not in LAYER_TYPES]
        if bad:
            raise ValueError(f"layer_types: {bad[0]!r} is not allowed (allowed: {list(LAYER_TYPES)})")
        if "sliding_attention" in self.layer_types and (self.sliding_window is None or self.sliding_window <= 0):
            raise ValueError(f"sliding_window must be > 0 when a layer is 'sliding_attention'; got {self.sliding_window}")
        if not 0 < self.num_experts_per_tok <= self.num_local_experts:
            raise ValueError(f"num_experts_per_tok={self.num_experts_per_tok} must be in [1, num_local_experts="
                             f"{self.num_local_experts}]")
        if self.swiglu_limit <= 0:
            raise ValueError(f"swiglu_limit must be > 0, got {self.swiglu_limit}")

    @property
    def num_experts(self) -> int:
        """E (= ``num_local_experts``)."""
        return self.num_local_experts

    @classmethod
    def from_hf(cls, d: dict[str, Any] | str | Path, **overrides: Any) -> "GptOssConfig":
        """From an HF ``config.json`` dict or path (``num_experts`` accepted for ``num_local_experts``)."""
        src = "config.json" if isinstance(d, dict) else str(d)
        d = dict(d if isinstance(d, dict) else read_hf_config(d))
        if "num_local_experts" not in d and "num_experts" in d:
            d["num_local_experts"] = d["num_experts"]
        if not d.get("rope_parameters") and not d.get("rope_scaling"):
            d["rope_parameters"] = _default_yarn()
        d.update(overrides)
        return hf_config_to_struct(cls, d, 150000.0, src)

