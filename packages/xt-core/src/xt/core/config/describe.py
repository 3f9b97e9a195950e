"""Introspection of config Struct types: what a dotted key accepts, said in TOML terms.

Used by `xt.core.config.loader` to tell the user what is allowed when a key is unknown or a value
has the wrong type. Works on any tree of `msgspec.Struct` types (unions, Optional, Literal,
Annotated, list/tuple/dict are understood).
"""
from __future__ import annotations

import enum
import pathlib
import types
import typing
from typing import Any

import msgspec

__all__ = ["describe_type", "type_at", "struct_field_names", "check_strict"]

_NONE = type(None)


def _unwrap(tp: Any) -> Any:
    """Strip `Annotated[...]` wrappers (msgspec constraints) from a type."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _union_members(tp: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return typing.get_args(tp)
    return None


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def struct_field_names(cls: type[msgspec.Struct]) -> list[str]:
    """Names of the fields of Struct type `cls`, in declaration order."""
    return [f.encode_name for f in msgspec.structs.fields(cls)]


def _field_type(cls: type[msgspec.Struct], name: str) -> Any | None:
    for f in msgspec.structs.fields(cls):
        if f.encode_name == name:
            return f.type
    return None


def type_at(root: type, parts: list[str]) -> Any | None:
    """The declared type at a dotted key below `root`, or None if the key does not exist.

    Args:
        root: a `msgspec.Struct` type.
        parts: the key split on dots, e.g. ``["train", "dtype"]``; list indices (``"[0]"``) step
            into the element type.

    Returns:
        The (un-Annotated) type, or None when a part names no field.
    """
    tp: Any = root
    for part in parts:
        tp = _unwrap(tp)
        members = _union_members(tp)
        if members is not None:  # step into the (first) struct member of an Optional/Union
            structs = [m for m in members if _is_struct(_unwrap(m))]
            if not structs:
                return None
            tp = _unwrap(structs[0])
        if part.startswith("["):
            args = typing.get_args(tp)
            if not args:
                return None
            tp = args[0]
            continue
        if not _is_struct(tp):
            return None
        tp = _field_type(tp, part)
        if tp is None:
            return None
    return _unwrap(tp)


def struct_at(root: type, parts: list[str]) -> type | None:
    """The `msgspec.Struct` type of the table at a dotted key below `root` (the struct member of an
    optional table such as ``data.vision``), or None when the key names no table.

    Args:
        root, parts: as for `type_at`.
    """
    tp = type_at(root, parts)
    members = _union_members(tp) if tp is not None else None
    if members is not None:
        tp = next((_unwrap(m) for m in members if _is_struct(_unwrap(m))), None)
    return tp if _is_struct(tp) else None


def describe_type(tp: Any) -> str:
    """Describe what values a type accepts, in TOML words (e.g. ``"one of 'bf16', 'fp32'"``)."""
    tp = _unwrap(tp)
    members = _union_members(tp)
    if members is not None:
        parts = [describe_type(m) for m in members if m is not _NONE]
        return " or ".join(dict.fromkeys(parts))
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if _is_struct(tp):
        return "a table with keys " + ", ".join(struct_field_names(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if origin in (list, tuple, set, frozenset):
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"an array of {len(args)} items ({', '.join(describe_type(a) for a in args)})"
        inner = describe_type(args[0]) if args else "anything"
        return f"an array of {inner}"
    if origin is dict:
        return "a table"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             pathlib.Path: "a path string", _NONE: "nothing"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def check_strict(cls: type, seen: set | None = None) -> None:
    """Check that every Struct reachable from `cls` forbids unknown fields.

    Raises:
        TypeError: naming the Struct class that would silently accept a misspelt key.
    """
    seen = set() if seen is None else seen
    tp = _unwrap(cls)
    if id(tp) in seen:
        return
    seen.add(id(tp))
    if _is_struct(tp):
        if not tp.__struct_config__.forbid_unknown_fields:
            raise TypeError(f"config section {tp.__qualname__} must forbid unknown fields: "
                            "derive it from xt.core.config.ConfigStruct")
        for f in msgspec.structs.fields(tp):
            check_strict(f.type, seen)
        return
    for arg in typing.get_args(tp):
        if arg is not Ellipsis and not isinstance(arg, (str, int, float, bool)):
            check_strict(arg, seen)
