"""Llama configuration (HF ``LlamaForCausalLM`` ``config.json`` field names) and the HF-config helpers
shared by the zoo models (Llama, DeepSeek-V3 / Kimi K2, GPT-OSS).

Reference: Touvron et al. 2023 (Llama 2), Meta 2024 (Llama 3); field names follow HF transformers'
``LlamaConfig``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

__all__ = ["LlamaConfig", "hf_config_to_struct", "read_hf_config", "normalize_rope_parameters"]

def normalize_rope_parameters(d: dict[str, Any], default_theta: float) -> dict[str, Any]:
    """One ``rope_parameters`` dict from either the transformers-5 key or the legacy ``rope_theta`` +
    ``rope_scaling`` keys (older hub checkpoints); ``rope_type`` defaults to ``"default"``."""
    params = dict(d.get("rope_parameters") or {})
    legacy = d.get("rope_scaling") or {}
    for k, v in legacy.items():
        params.setdefault("rope_type" if k == "type" else k, v)
    params.setdefault("rope_theta", d.get("rope_theta", default_theta))
    params.setdefault("rope_type", "default")
    return params


def hf_config_to_struct(cls: type, d: dict[str, Any], default_theta: float = 10000.0,
                        source: str = "config.json") -> Any:
    """Build the msgspec config ``cls`` from an HF ``config.json`` dict.

    Keys that ``cls`` does not have are ignored (hub configs carry many bookkeeping and
    inference-only keys); ``rope_theta``/``rope_scaling`` are folded into ``rope_parameters``.

    Raises:
        ValueError: a value of the wrong type or an invalid combination, naming the field and ``source``.
    """
    fields = set(cls.__struct_fields__)
    picked = {k: v for k, v in d.items() if k in fields}
    if "rope_parameters" in fields:
        picked["rope_parameters"] = normalize_rope_parameters(d, default_theta)
    if "tie_word_embeddings" in fields and "tie_word_embeddings" in d:
        picked["tie_word_embeddings"] = bool(d["tie_word_embeddings"])
    try:
        return msgspec.convert(picked, cls)
    except msgspec.ValidationError as e:
        raise ValueError(f"{source}: {e}") from None


def read_hf_config(path: str | Path) -> dict[str, Any]:
    """Read ``config.json`` (a file or a directory holding one).

    Raises:
        FileNotFoundError: no config.json there. ValueError: not valid JSON (with line number).
    """
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: invalid JSON at line {e.lineno}: {e.msg}") from None


def check_common(c: Any) -> None:
    """Validate the fields every zoo config shares; raises ValueError naming the field."""
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
        if getattr(c, name) <= 0:
            raise ValueError(f"{name} must be > 0, got {getattr(c, name)}")
    kv = getattr(c, "num_key_value_heads", None)
    if kv is not None and (kv <= 0 or c.num_attention_heads % kv):
        raise ValueError(f"num_key_value_heads={kv} must divide num_attention_heads={c.num_attention_heads}")
    if getattr(c, "hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act={c.hidden_act!r} is not supported (allowed: 'silu')")
    if "rope_theta" not in c.rope_parameters:
        raise ValueError("rope_parameters must contain 'rope_theta'")


class LlamaConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Llama architecture (HF ``LlamaConfig`` names).

    Attributes: sizes in elements; ``head_dim`` defaults to ``hidden_size // num_attention_heads``
    and ``num_key_value_heads`` to ``num_attention_heads`` (grouped-query attention when smaller);
    ``rope_parameters`` as in :func:`xt.models.common.yarn.rope_inv_freq` (``default``, ``linear``,
    ``llama3``, ``yarn``); ``tie_word_embeddings`` shares ``lm_head.weight`` with the embedding.
    """

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
            self.head_dim = self.hidden_size // self.num_attention_heads
        check_common(self)

    @classmethod
    def from_hf(cls, d: dict[str, Any] | str | Path) -> "LlamaConfig":
        """From an HF ``config.json`` dict or path (see :func:`hf_config_to_struct`)."""
        src = "config.json" if isinstance(d, dict) else str(d)
        return hf_config_to_struct(cls, d if isinstance(d, dict) else read_hf_config(d), 10000.0, src)


    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> "LlamaConfig":
        """Registry entry point (:mod:`xt.models.registry`): :meth:`from_hf`, errors prefixed by ``source``."""
        try:
            return cls.from_hf(d)
        except ValueError as e:
            msg = str(e)
            raise ValueError(msg if msg.startswith(source) else f"{source}: {msg}") from None

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF ``config.json`` dict (transformers 5 form; ``architectures``/``model_type`` set)."""
        d = msgspec.to_builtins(self)
        d["architectures"] = ["LlamaForCausalLM"]
        d["model_type"] = "llama"
        return d
