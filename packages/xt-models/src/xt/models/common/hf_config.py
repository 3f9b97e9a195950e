"""Helpers to turn an HF ``config.json`` dict into a typed ``msgspec.Struct`` and back."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from xt.core.errors import ConfigError as _CoreConfigError

__all__ = ["ConfigError", "ModelConfigError", "read_config_json", "convert_known_fields",
           "rope_fields_from_hf", "field_of_message", "model_config_error"]

S = TypeVar("S", bound=msgspec.Struct)

_MSGSPEC_AT = re.compile(r"^(?P<detail>.*?) - at `\$(?P<path>[^`]*)`$", re.S)
_LEADING_FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:=| must | is | has |: )")


class ModelConfigError(_CoreConfigError):
    """A model config value (an HF ``config.json`` field) is missing, ill-typed or inconsistent.

    A `xt.core.config.ConfigError` (hence an `xt.core.errors.XTError` and a `ValueError`); also
    importable as ``xt.models.ConfigError``. The message names the field; the attributes let a
    caller that knows where the dict came from (e.g. ``xt train``'s ``[model.config]``) point at
    the file and line.

    Attributes:
        field: the HF field at fault (e.g. ``"num_experts_per_tok"``; nested ones dotted, e.g.
            ``"rope_parameters.factor"``), or None when no single field is (unreadable file).
        detail: what is wrong, without the source prefix of the message.
    """

    def __init__(self, message: str, *, field: str | None = None, detail: str | None = None,
                 key: str | None = None, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message, key=key, path=path, line=line)
        self.field = field
        self.detail = detail if detail is not None else message


ConfigError = ModelConfigError  # the name xt.models has always exported


def field_of_message(message: str, fields: Any = None) -> str | None:
    """The field a validation message is about: the name it starts with (``"num_experts_per_tok
    must be ..."``, ``"head_dim=7 ..."``), if it is one of `fields` (any container; None: any)."""
    m = _LEADING_FIELD.match(message)
    if m and (fields is None or m.group(1) in fields):
        return m.group(1)
    return None


def model_config_error(err: msgspec.ValidationError, source: str, fields: Any = None) -> ModelConfigError:
    """Turn msgspec's error from building a config Struct into a `ModelConfigError`.

    The field comes from a `ModelConfigError` raised in ``__post_init__`` (msgspec keeps it as the
    cause), else from msgspec's ``- at `$.FIELD``` suffix (index suffixes dropped), else from the
    name the message starts with when it is one of `fields` (see `field_of_message`).

    Returns:
        ``ModelConfigError("SOURCE: DETAIL", field=..., detail=...)`` (to raise).
    """
    cause = err.__cause__
    if isinstance(cause, ModelConfigError):
        return ModelConfigError(f"{source}: {cause.detail}", field=cause.field, detail=cause.detail)
    text = str(err)
    m = _MSGSPEC_AT.match(text)
    if m:
        field = re.sub(r"\[\d+\]", "", m.group("path")).strip(".") or None
        detail = m.group("detail")
        return ModelConfigError(f"{source}: {text}", field=field, detail=detail)
    return ModelConfigError(f"{source}: {text}", field=field_of_message(text, fields), detail=text)


def read_config_json(path: str | Path) -> dict[str, Any]:
    """Read ``config.json`` (a file or a directory holding one).

    Raises:
        ModelConfigError: missing file or invalid JSON (with file, line and column); no `field`.
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
            raise ConfigError(f"rope_parameters must be an object; got {params!r}",
                              field="rope_parameters" if "rope_parameters" in d else "rope_scaling")
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
        ModelConfigError: a wrong type or value; the message names the field and ``source``,
            ``.field`` holds the field.
    """
    known = {k: v for k, v in d.items() if k in cls.__struct_fields__}
    try:
        return msgspec.convert(known, cls, strict=False)
    except msgspec.ValidationError as e:
        raise model_config_error(e, source, cls.__struct_fields__) from e
