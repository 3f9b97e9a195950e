"""HF ``config.json`` helpers shared by the model configs (Qwen3, Llama, DeepSeek-V3 / Kimi K2, GPT-OSS).

:class:`HFConfigMixin` gives a msgspec config struct the registry's ``from_hf_dict`` entry point and
an HF ``to_hf_dict``; the functions map HF field names (both the transformers-5 ``rope_parameters``
and the legacy ``rope_theta``/``rope_scaling`` forms) onto the struct.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from xt.models.common.hf_config import ModelConfigError, field_of_message, model_config_error

__all__ = ["default_head_dim", "HFConfigMixin", "hf_config_to_struct", "read_hf_config", "normalize_rope_parameters", "check_common"]


class HFConfigMixin:
    """``from_hf_dict`` / ``to_hf_dict`` for a family's config struct (the base of all four).

    A subclass sets ``HF_ARCHITECTURE`` and ``HF_MODEL_TYPE`` and implements ``from_hf(d)``; it may
    override ``_hf_extra(d)`` to rename or drop XT-only fields on the way out, and
    ``hf_architecture()`` / ``hf_model_type()`` when they depend on the instance (Qwen3: dense or
    MoE).
    """

    __slots__ = ()
    HF_ARCHITECTURE: ClassVar[str]
    HF_MODEL_TYPE: ClassVar[str]

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> Any:
        """Registry entry point (:mod:`xt.models.registry`): ``cls.from_hf(d)``.

        Raises:
            xt.models.ModelConfigError: (a ValueError) a bad field, the message prefixed by
                ``source``; ``.field`` names the field when the message starts with one.
        """
        try:
            return cls.from_hf(d)
        except ValueError as e:
            rest = str(e)
            for prefix in (source, "config.json"):
                if rest.startswith(prefix + ": "):
                    rest = rest[len(prefix) + 2:]
            if isinstance(e, ModelConfigError):
                field, detail = e.field, e.detail
            else:
                field, detail = field_of_message(rest, cls.__struct_fields__), rest
            raise ModelConfigError(f"{source}: {rest}", field=field, detail=detail) from None

    def _hf_extra(self, d: dict[str, Any]) -> dict[str, Any]:
        return d

    def hf_architecture(self) -> str:
        """The ``architectures[0]`` written to ``config.json`` (default ``HF_ARCHITECTURE``)."""
        return self.HF_ARCHITECTURE

    def hf_model_type(self) -> str:
        """The ``model_type`` written to ``config.json`` (default ``HF_MODEL_TYPE``)."""
        return self.HF_MODEL_TYPE

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF ``config.json`` dict (transformers 5 form; ``architectures``/``model_type`` set)."""
        d = self._hf_extra(msgspec.to_builtins(self))
        d["architectures"] = [self.hf_architecture()]
        d["model_type"] = self.hf_model_type()
        return d


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
        xt.models.ModelConfigError: (a ValueError) a value of the wrong type or an invalid
            combination, naming the field (``.field``) and ``source``.
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
        raise model_config_error(e, source, fields) from None


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


def default_head_dim(c: Any) -> int:
    """``hidden_size // num_attention_heads``, for a config that gives no ``head_dim``.

    Raises:
        ValueError: ``num_attention_heads`` is not > 0 or does not divide ``hidden_size`` (naming
            both; give ``head_dim`` explicitly for such a model).
    """
    heads, hidden = c.num_attention_heads, c.hidden_size
    if not isinstance(heads, int) or heads <= 0:
        raise ValueError(f"num_attention_heads must be > 0, got {heads}")
    if hidden % heads:
        raise ValueError(f"num_attention_heads={heads} must divide hidden_size={hidden} when head_dim is not "
                         "given (or set head_dim explicitly)")
    return hidden // heads


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
