"""Helpers to turn an HF ``config.json`` dict into a typed ``msgspec.Struct`` and back."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import msgspec

__all__ = ["ConfigError", "read_config_json", "convert_known_fields", "rope_fields_from_hf"]

S = TypeVar("S", bound=msgspec.Struct)


class ConfigError(ValueError):
    """A model config value is missing or invalid; the message names the field."""


def read_config_json(path: str | Path) -> dict[str, Any]:
    """Read ``config.json`` (a file or a directory holding one).

    Raises:
        ConfigError: missing file or invalid JSON (with file, line and column).
    """
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read model config {p}: {e.strerror}") from e
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from e
    if not isinstance(d, dict):
        raise ConfigError(f"{p}: expected a JSON object at the top level")
    return d


def rope_fields_from_hf(d: dict[str, Any]) -> dict[str, Any]:
    """Read ``rope_theta`` and the scaling parameters from either HF form.

    transformers 5 writes ``rope_parameters = {"rope_type": ..., "rope_theta": ..., ...}``; older
    files have a top-level ``rope_theta`` and optional ``rope_scaling`` (``type``/``rope_type``).

    Returns:
        ``{"rope_theta": float?, "rope_parameters": dict?}`` with only the keys found.

    Raises:
        ConfigError: ``rope_parameters``/``rope_scaling`` is not an object.
    """
    out: dict[str, Any] = {}
    params = d.get("rope_parameters")
    if params is None and d.get("rope_scaling") is not None:
        params = d["rope_scaling"]
    if params is not None:
        if not isinstance(params, dict):
            raise ConfigError(f"rope_parameters must be an object; got {params!r}")
        params = dict(params)
        if "type" in params and "rope_type" not in params:
            params["rope_type"] = params.pop("type")
        if "rope_theta" in params:
            out["rope_theta"] = params.pop("rope_theta")
        params.setdefault("rope_type", "default")
        out["rope_parameters"] = params
    if "rope_theta" in d and d["rope_theta"] is not None:
        out["rope_theta"] = d["rope_theta"]
    return out


def convert_known_fields(cls: type[S], d: dict[str, Any], source: str = "config") -> S:
    """Build ``cls`` from the keys of ``d`` that are fields of ``cls``; other keys are ignored.

    Raises:
        ConfigError: a wrong type or value; the message names the field and ``source``.
    """
    known = {k: v for k, v in d.items() if k in cls.__struct_fields__}
    try:
        return msgspec.convert(known, cls, strict=False)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{source}: {e}") from e
