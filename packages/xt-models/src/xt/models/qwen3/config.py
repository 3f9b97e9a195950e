"""Typed config of Qwen3 (dense) and Qwen3-MoE, read from and written to HF ``config.json``.

Field names are HF's (``Qwen3Config`` / ``Qwen3MoeConfig``); ``router_z_loss_coef`` is ours.
A dense model has ``num_experts == 0``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import msgspec

from xt.models.common.hf_config import ConfigError, convert_known_fields, rope_fields_from_hf
from xt.models.common.rope import ROPE_INIT_FUNCTIONS
from xt.models.common.zoo_config import HFConfigMixin, read_hf_config

__all__ = ["Qwen3Config", "ConfigError"]

_ARCH = {"qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}


class Qwen3Config(HFConfigMixin, msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Qwen3 / Qwen3-MoE hyper-parameters (HF names; sizes are counts, not bytes).

    On the shared :class:`~xt.models.common.zoo_config.HFConfigMixin` (``from_hf_dict`` /
    ``to_hf_dict``); ``model_type`` is a field here (``qwen3`` or ``qwen3_moe``) and picks the
    architecture written out.

    Raises (at construction, via ``__post_init__``):
        ConfigError: (`xt.models.ModelConfigError`) a value out of range or inconsistent; the
            message names the field, ``.field`` holds it.
    """

    HF_ARCHITECTURE: ClassVar[str] = _ARCH["qwen3"]
    HF_MODEL_TYPE: ClassVar[str] = "qwen3"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    model_type: str = "qwen3"
    rope_theta: float = 10000.0
    rope_parameters: dict[str, Any] | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    attention_dropout: float = 0.0
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    use_sliding_window: bool = False
    # MoE (num_experts == 0: dense)
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = msgspec.field(default_factory=list)
    router_aux_loss_coef: float = 0.001
    router_z_loss_coef: float = 0.0
    # tokens
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.rope_parameters is None:
            self.rope_parameters = {"rope_type": "default"}
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and self.num_attention_heads > 0:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(f"num_attention_heads={self.num_attention_heads} must divide hidden_size="
                                  f"{self.hidden_size} when head_dim is not set (head_dim defaults to "
                                  f"hidden_size // num_attention_heads)", field="num_attention_heads")
            self.head_dim = self.hidden_size // self.num_attention_heads
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0; got {getattr(self, name)}", field=name)
        if self.model_type not in _ARCH:
            raise ConfigError(f"model_type must be one of {sorted(_ARCH)}; got {self.model_type!r}",
                              field="model_type")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                              f"num_key_value_heads={self.num_key_value_heads}", field="num_attention_heads")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even (RoPE); got {self.head_dim}", field="head_dim")
        if not self.rope_theta > 0:
            raise ConfigError(f"rope_theta must be > 0; got {self.rope_theta}", field="rope_theta")
        rope_type = self.rope_parameters.get("rope_type", "default")
        if rope_type not in ROPE_INIT_FUNCTIONS:
            raise ConfigError(f"rope_parameters.rope_type={rope_type!r} not supported; allowed: "
                              f"{sorted(ROPE_INIT_FUNCTIONS)}", field="rope_parameters")
        if not self.rms_norm_eps > 0:
            raise ConfigError(f"rms_norm_eps must be > 0; got {self.rms_norm_eps}", field="rms_norm_eps")
        if self.hidden_act != "silu":
            raise ConfigError(f"hidden_act must be 'silu'; got {self.hidden_act!r}", field="hidden_act")
        if self.attention_dropout != 0:
            raise ConfigError(f"attention_dropout must be 0 (not implemented); got {self.attention_dropout}",
                              field="attention_dropout")
        if self.use_sliding_window:
            raise ConfigError("use_sliding_window=true is not supported (all layers use full attention)",
                              field="use_sliding_window")
        if self.num_experts < 0:
            raise ConfigError(f"num_experts must be >= 0; got {self.num_experts}", field="num_experts")
        if self.num_experts > 0:
            if not 1 <= self.num_experts_per_tok <= self.num_experts:
                raise ConfigError(f"num_experts_per_tok must be in [1, num_experts={self.num_experts}]; "
                                  f"got {self.num_experts_per_tok}", field="num_experts_per_tok")
            if self.moe_intermediate_size <= 0:
                raise ConfigError(f"moe_intermediate_size must be > 0; got {self.moe_intermediate_size}",
                                  field="moe_intermediate_size")
            if self.decoder_sparse_step <= 0:
                raise ConfigError(f"decoder_sparse_step must be > 0; got {self.decoder_sparse_step}",
                                  field="decoder_sparse_step")
            bad = [i for i in self.mlp_only_layers if not 0 <= i < self.num_hidden_layers]
            if bad:
                raise ConfigError(f"mlp_only_layers entries must be in [0, num_hidden_layers="
                                  f"{self.num_hidden_layers}); got {bad}", field="mlp_only_layers")
        for name in ("router_aux_loss_coef", "router_z_loss_coef"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0; got {getattr(self, name)}", field=name)

    # -- structure -------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        """True when at least one layer is an MoE layer."""
        return any(self.is_moe_layer(i) for i in range(self.num_hidden_layers))

    def is_moe_layer(self, layer_idx: int) -> bool:
        """HF rule: MoE unless listed in ``mlp_only_layers``, on every ``decoder_sparse_step``-th layer."""
        return (self.num_experts > 0 and layer_idx not in self.mlp_only_layers
                and (layer_idx + 1) % self.decoder_sparse_step == 0)

    def active_params(self) -> int:
        """Parameters touched per token: non-embedding, LM head included, top-k experts only."""
        D, hd = self.hidden_size, self.head_dim
        Hq, Hkv = self.num_attention_heads, self.num_key_value_heads
        bias = (Hq + 2 * Hkv) * hd + D if self.attention_bias else 0
        attn = D * Hq * hd * 2 + D * Hkv * hd * 2 + 2 * hd + bias
        total = 0
        for i in range(self.num_hidden_layers):
            if self.is_moe_layer(i):
                mlp = self.num_experts * D + self.num_experts_per_tok * 3 * D * self.moe_intermediate_size
            else:
                mlp = 3 * D * self.intermediate_size
            total += attn + mlp + 2 * D
        return total + D + self.vocab_size * D

    # -- HF ----------------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, d: dict[str, Any] | str | Path) -> "Qwen3Config":
        """From an HF config dict or ``config.json`` path; unknown (other HF) keys are ignored.

        Accepts ``num_local_experts`` (what transformers 5.24 writes) for ``num_experts``, both
        rope forms (``rope_theta`` at top level or inside ``rope_parameters``), and infers
        ``model_type`` from ``architectures`` when it is missing. Use ``from_hf_dict(d, source)``
        (the registry's entry point) to name another source in the messages.

        Raises:
            ConfigError: a missing/ill-typed/out-of-range field (named in the message).
        """
        src = "config.json" if isinstance(d, dict) else str(d)
        d = dict(d if isinstance(d, dict) else read_hf_config(d))
        if "num_experts" not in d and "num_local_experts" in d:
            d["num_experts"] = d["num_local_experts"]
        if "model_type" not in d:
            archs = d.get("architectures") or []
            d["model_type"] = "qwen3_moe" if any("Moe" in str(a) for a in archs) else "qwen3"
        rope = rope_fields_from_hf(d)
        d.pop("rope_theta", None)
        d.pop("rope_parameters", None)
        return convert_known_fields(cls, {**d, **rope}, src)

    def hf_architecture(self) -> str:
        """``Qwen3ForCausalLM`` or ``Qwen3MoeForCausalLM``, by ``model_type``."""
        return _ARCH[self.model_type]

    def hf_model_type(self) -> str:
        """``model_type`` as configured (``qwen3`` or ``qwen3_moe``)."""
        return self.model_type

    def _hf_extra(self, d: dict[str, Any]) -> dict[str, Any]:
        """transformers 5 form (``rope_parameters`` holds ``rope_theta``); no MoE keys when dense."""
        d.pop("rope_theta")
        d["rope_parameters"] = {**self.rope_parameters, "rope_theta": self.rope_theta}
        if self.num_experts == 0:
            for k in ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob",
                      "decoder_sparse_step", "mlp_only_layers", "router_aux_loss_coef", "router_z_loss_coef"):
                d.pop(k)
        d["sliding_window"] = None
        return d
