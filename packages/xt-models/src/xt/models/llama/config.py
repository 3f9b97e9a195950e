"""Llama configuration (HF ``LlamaForCausalLM`` ``config.json`` field names).

Reference: Touvron et al. 2023 (Llama 2), Meta 2024 (Llama 3); field names follow HF transformers'
``LlamaConfig``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import msgspec

from xt.models.common.zoo_config import HFConfigMixin, check_common, default_head_dim, hf_config_to_struct, read_hf_config

__all__ = ["LlamaConfig"]

class LlamaConfig(HFConfigMixin, msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Llama architecture (HF ``LlamaConfig`` names).

    Attributes: sizes in elements; ``head_dim`` defaults to ``hidden_size // num_attention_heads``
    and ``num_key_value_heads`` to ``num_attention_heads`` (grouped-query attention when smaller);
    ``rope_parameters`` as in :func:`xt.models.common.yarn.rope_inv_freq` (``default``, ``linear``,
    ``llama3``, ``yarn``); ``tie_word_embeddings`` shares ``lm_head.weight`` with the embedding.
    """

    HF_ARCHITECTURE: ClassVar[str] = "LlamaForCausalLM"
    HF_MODEL_TYPE: ClassVar[str] = "llama"

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    rope_parameters: dict[str, Any] = msgspec.field(default_factory=lambda: {"rope_type": "default",
                                                                             "rope_theta": 10000.0})
    attention_bias: bool = False
    mlp_bias: bool = False
    eos_token_id: int | list[int] | None = None

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = default_head_dim(self)
        check_common(self)

    @classmethod
    def from_hf(cls, d: dict[str, Any] | str | Path) -> "LlamaConfig":
        """From an HF ``config.json`` dict or path (see :func:`hf_config_to_struct`)."""
        src = "config.json" if isinstance(d, dict) else str(d)
        return hf_config_to_struct(cls, d if isinstance(d, dict) else read_hf_config(d), 10000.0, src)


