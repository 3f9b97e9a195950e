"""The keys of a config Struct tree with their types, defaults and one-line docs: what
``xt config keys`` prints.

The docs come from each Struct's docstring, Google style: an ``Attributes:`` block of
``name: text`` entries (continuation lines indented deeper). Every section of XT documents its
fields that way, so the listing is the docstrings, not a second copy of them.
"""
from __future__ import annotations

import inspect
import re
import typing
from dataclasses import dataclass
from typing import Any

import msgspec

from xt.core.config.describe import describe_type
from xt.core.config.dump import toml_value

__all__ = ["ConfigKey", "attribute_docs", "config_keys"]

_ENTRY = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*(?:\s*,\s*[A-Za-z_][A-Za-z0-9_]*)*)\s*:\s*(.*)$")


@dataclass(frozen=True)
class ConfigKey:
    """One key of a config: ``train.steps``, its type in TOML words, its default and its doc.

    Attributes:
        key: dotted key, e.g. ``"train.steps"``.
        type: what it accepts (`xt.core.config.describe.describe_type`), e.g. ``"an integer"``.
        default: the default as a TOML literal, ``"(unset)"`` for None, ``"(required)"`` when there
            is none.
        doc: the first sentence of the field's entry in its Struct's ``Attributes:`` docstring.
    """

    key: str
    type: str
    default: str
    doc: str


def attribute_docs(cls: type) -> dict[str, str]:
    """``{field: text}`` from the ``Attributes:`` block of `cls`'s docstring (entries that name
    several fields, ``a, b: text``, give each the text); continuation lines are joined."""
    doc = inspect.getdoc(cls) or ""
    out: dict[str, str] = {}
    lines = doc.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return out
    base: int | None = None
    current: list[str] = []
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if base is None:
            base = indent
        if indent < base:  # the block ended (e.g. "Raises:")
            break
        m = _ENTRY.match(line)
        if indent == base and m:
            current = [n.strip() for n in m.group(2).split(",")]
            for n in current:
                out[n] = m.group(3).strip()
        elif current:
            for n in current:
                out[n] = f"{out[n]} {line.strip()}".strip()
    return out


def _first_sentence(text: str) -> str:
    """`text` up to its first ``.`` outside parentheses and abbreviations ("e.g.", "et al.", ...),
    with RST double backticks shown as single ones (a ``;`` does not end it: what follows often
    gives the other values' meaning, e.g. "0 = synchronous; 1 = ...")."""
    depth = 0
    for i, c in enumerate(text):
        depth += (c == "(") - (c == ")")
        if depth == 0 and c == "." and (i + 1 == len(text) or text[i + 1] == " "):
            if not re.search(r"(\be\.g|\bi\.e|\betc|\bal|\bvs|\bcf)$", text[:i]):
                text = text[:i + 1]
                break
    return text.replace("``", "`")


def _default(field: msgspec.structs.FieldInfo) -> Any:
    if field.default is not msgspec.NODEFAULT:
        return field.default
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    return msgspec.NODEFAULT


def _struct_type(tp: Any) -> type | None:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp if isinstance(tp, type) and issubclass(tp, msgspec.Struct) else None


def config_keys(cls: type, prefix: str = "") -> list[ConfigKey]:
    """Every leaf key of the Struct type `cls`, in declaration order, nested Structs expanded.

    Args:
        cls: a `msgspec.Struct` type (e.g. the CLI's ``XTConfig`` or one section).
        prefix: prepended to each key with a dot (``"train"`` gives ``train.steps``).

    Returns:
        One `ConfigKey` per key; a field holding a Struct is replaced by that Struct's keys.
    """
    docs = attribute_docs(cls)
    out: list[ConfigKey] = []
    for f in msgspec.structs.fields(cls):
        key = f"{prefix}.{f.encode_name}" if prefix else f.encode_name
        sub = _struct_type(f.type)
        if sub is not None:
            out += config_keys(sub, key)
            continue
        value = _default(f)
        if value is msgspec.NODEFAULT:
            default = "(required)"
        elif value is None:
            default = "(unset)"
        else:
            default = toml_value(msgspec.to_builtins(value))
        out.append(ConfigKey(key, describe_type(f.type), default, _first_sentence(docs.get(f.encode_name, ""))))
    return out
