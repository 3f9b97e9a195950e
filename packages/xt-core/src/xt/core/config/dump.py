"""Write a validated config back as TOML (e.g. ``out_dir/config.toml`` for reproducibility).

`load_config(path, cls)` of the written text gives back an equal object. Fields set to None are
left out (TOML has no null; on reload they take their None default; inside inline tables, such
as the entries of an array of tables, they are always left out), or with
``unset_as_comments=True`` written as a comment ``# key = (unset)`` so that every key shows.
Dicts become tables.
"""
from __future__ import annotations

import json
import math
from typing import Any

import msgspec

__all__ = ["dump_config", "toml_value"]


def toml_value(v: Any) -> str:
    """A python value (bool, int, float, str, list/tuple, dict) as a TOML literal.

    Raises:
        TypeError: for values TOML cannot hold (e.g. None, bytes).
    """
    return _scalar(v)


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_scalar(x)}" for k, x in v.items() if x is not None) + "}"
    raise TypeError(f"dump_config: cannot write {type(v).__name__} value {v!r} as TOML")


def _key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "_-" for c in k) else json.dumps(k)


def _table(data: dict[str, Any], prefix: list[str], out: list[str], unset: bool) -> None:
    flat = {k: v for k, v in data.items() if not isinstance(v, dict) and (v is not None or unset)}
    nested = {k: v for k, v in data.items() if isinstance(v, dict)}
    if prefix and (flat or not nested):
        out.append(f"[{'.'.join(_key(p) for p in prefix)}]")
    out.extend(f"# {_key(k)} = (unset)" if v is None else f"{_key(k)} = {_scalar(v)}" for k, v in flat.items())
    if flat or (prefix and not nested):
        out.append("")
    for k, v in nested.items():
        _table(v, prefix + [k], out, unset)


def dump_config(cfg: msgspec.Struct, unset_as_comments: bool = False) -> str:
    """Render a config Struct (any tree of sections) as TOML text.

    Args:
        cfg: a validated config (e.g. the result of `load_config`).
        unset_as_comments: write fields that are None as ``# key = (unset)`` comment lines
            (the text still loads back to an equal config).

    Returns:
        TOML text, one ``[section]`` table per nested Struct.

    Raises:
        TypeError: for values TOML cannot hold (e.g. bytes).
    """
    out: list[str] = []
    _table(msgspec.to_builtins(cfg), [], out, unset_as_comments)
    return "\n".join(out).rstrip("\n") + "\n"
