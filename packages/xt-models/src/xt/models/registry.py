"""Model registry: pick the model class for an HF config by ``architectures`` / ``model_type``.

Model families register a :class:`ModelSpec` when their package is imported; the built-in
families are listed in ``_BUILTIN_MODULES`` and imported on first use.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import msgspec
import torch
from torch import nn

from xt.models.common.hf_config import ConfigError, read_config_json

__all__ = ["ModelSpec", "register_model", "get_spec", "spec_of_config", "config_from_hf", "build_model"]

_BUILTIN_MODULES = ("xt.models.qwen3", "xt.models.llama", "xt.models.gpt_oss", "xt.models.deepseek_v3",
                    "xt.models.internvl")


@dataclass(frozen=True)
class ModelSpec:
    """How to build and (de)serialise one model family.

    Attributes:
        name: family name.
        architectures: HF ``architectures`` entries it serves (e.g. ``"Qwen3MoeForCausalLM"``).
        model_types: HF ``model_type`` values it serves.
        config_cls: a ``msgspec.Struct`` with ``from_hf_dict(d, source)`` and ``to_hf_dict()``.
        model_cls: ``model_cls(config, attn_backend=...)``.
        to_hf: ``(our_state_dict, config) -> hf_state_dict``.
        from_hf: ``(keys, get, config, source) -> our_state_dict``.
        hf_rows: ``hf_rows(config, keys) -> (rename, load_rows)`` for a sharded load
            (:mod:`xt.models.hf_rows`): ``rename(hf_key) -> xt_key | None`` (None: read with another
            key, or skipped) and ``load_rows(hf_key, get_rows, start, stop)`` the rows ``[start, stop)``
            of dim 0 of that key in XT's layout, read through ``get_rows(key, start, stop)``; None
            when the family has no sharded load.
        folder_config: ``folder_config(hf_config, keys, source) -> hf_config``: the config of a
            checkpoint folder given its weight names (:func:`xt.models.folder.read_folder_config`),
            for what ``config.json`` alone does not say (DeepSeek-V3: which MTP depths have
            weights); None: the ``config.json`` as written.
    """
    name: str
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    config_cls: type
    model_cls: Callable[..., nn.Module]
    to_hf: Callable[..., dict[str, torch.Tensor]]
    from_hf: Callable[..., dict[str, torch.Tensor]]
    hf_rows: Callable[..., tuple[Callable, Callable]] | None = None
    folder_config: Callable[..., dict[str, Any]] | None = None


_SPECS: list[ModelSpec] = []
_loaded = False


def register_model(spec: ModelSpec) -> None:
    """Add (or replace, by ``name``) a model family."""
    _SPECS[:] = [s for s in _SPECS if s.name != spec.name] + [spec]


def _ensure_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in _BUILTIN_MODULES:
            importlib.import_module(mod)


def get_spec(hf_config: dict[str, Any]) -> ModelSpec:
    """The spec serving ``hf_config`` (``architectures`` first, then ``model_type``).

    Raises:
        ConfigError: no registered family matches (the message lists the known ones; ``.field`` is
            ``"architectures"``, or ``"model_type"`` when no architectures are given).
    """
    _ensure_builtins()
    for arch in hf_config.get("architectures") or []:
        for s in _SPECS:
            if arch in s.architectures:
                return s
    mt = hf_config.get("model_type")
    for s in _SPECS:
        if mt in s.model_types:
            return s
    known = sorted(a for s in _SPECS for a in s.architectures)
    raise ConfigError(f"no model for architectures={hf_config.get('architectures')!r} model_type={mt!r}; "
                      f"known architectures: {known}",
                      field="architectures" if hf_config.get("architectures") else "model_type")


def spec_of_config(config: msgspec.Struct) -> ModelSpec:
    """The spec whose ``config_cls`` `config` is an instance of.

    Raises:
        ConfigError: no registered family has that config type.
    """
    _ensure_builtins()
    spec = next((s for s in _SPECS if isinstance(config, s.config_cls)), None)
    if spec is None:
        raise ConfigError(f"no registered model for config type {type(config).__name__}")
    return spec


def _as_dict(config: str | Path | dict[str, Any]) -> tuple[dict[str, Any], str]:
    if isinstance(config, (str, Path)):
        p = Path(config)
        return read_config_json(p), str(p / "config.json" if p.is_dir() else p)
    if isinstance(config, dict):
        return config, "config"
    raise TypeError(f"config must be a path, a dict or a model config Struct; got {type(config).__name__}")


def config_from_hf(config: str | Path | dict[str, Any]) -> Any:
    """Typed config from a ``config.json`` path/folder or dict.

    Raises:
        ConfigError: unreadable file, unknown architecture, or an invalid field (named).
    """
    d, source = _as_dict(config)
    return get_spec(d).config_cls.from_hf_dict(d, source=source)


def build_model(config: str | Path | dict[str, Any] | msgspec.Struct, *, dtype: torch.dtype | None = None,
                device: str | torch.device | None = None, attn_backend: str = "auto") -> nn.Module:
    """Build a freshly initialised model.

    Args:
        config: ``config.json`` path or folder, an HF config dict, or a typed config Struct.
        dtype: parameter dtype (default float32).
        device: where to allocate (``"meta"`` builds without memory).
        attn_backend: core attention backend (see :mod:`xt.models.common.core_attention`).

    Raises:
        ConfigError: unknown architecture or an invalid config field.
    """
    if isinstance(config, msgspec.Struct):
        spec = spec_of_config(config)
        cfg = config
    else:
        d, source = _as_dict(config)
        spec = get_spec(d)
        cfg = spec.config_cls.from_hf_dict(d, source=source)
    with torch.device(device or "cpu"):
        model = spec.model_cls(cfg, attn_backend=attn_backend)
    if dtype is not None:
        model = model.to(dtype)
    return model
