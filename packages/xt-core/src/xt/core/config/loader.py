"""Load a typed config from TOML plus ``--set a.b=c`` overrides, strictly.

`load_config` works for any tree of `msgspec.Struct` sections (derive them from
`xt.core.config.ConfigStruct`). Every problem becomes a `ConfigError` whose message names the
dotted key, where it was set (``file:line`` or the ``--set`` override) and what is allowed, e.g.::

    cfg.toml:7: bad value for `train.dtype`: Invalid enum value 'fp16'; allowed: one of 'auto', 'bf16', 'fp32', 'bfloat16', 'float32'
"""
from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from xt.core.config.base import ConfigError, ConfigFieldError
from xt.core.config.describe import check_strict, describe_type, struct_at, struct_field_names, type_at

__all__ = ["load_config", "convert_config", "parse_override", "apply_overrides", "find_key_line",
           "locate_key", "config_error_at"]

T = TypeVar("T", bound=msgspec.Struct)

_KEY_PART = re.compile(r"^[A-Za-z0-9_-]+$")
_BARE_OR_QUOTED = r'(?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')'
_KEY_LINE = re.compile(rf"^({_BARE_OR_QUOTED}(?:\s*\.\s*{_BARE_OR_QUOTED})*)\s*=")
_HEADER_LINE = re.compile(r"^\[\[?\s*([^\]]+?)\s*\]\]?")
_MSGSPEC_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `(?P<path>\$[^`]*)`)?$", re.S)


def parse_override(item: str) -> tuple[str, Any]:
    """Parse one ``key.path=value`` override.

    The value is read as a TOML literal (``5`` → int, ``1e-3`` → float, ``true`` → bool,
    ``[0.9, 0.95]`` → list, ``"x"`` → str); anything that is not valid TOML is taken as a plain
    string (``bf16`` → ``"bf16"``).

    Returns:
        (dotted key, value).

    Raises:
        ConfigError: if there is no ``=`` or a key part is empty or has characters other than
            letters, digits, ``_`` and ``-``.
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.steps=100", key=key or None)
    parts = key.split(".")
    if not all(_KEY_PART.match(p) for p in parts):
        raise ConfigError(f"--set {item!r}: bad key {key!r}; use dotted names like train.steps",
                          key=key)
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, str]:
    """Apply ``key=value`` overrides to a nested dict in place (creating tables as needed).

    Returns:
        A map from each overridden dotted key to its original ``--set`` text (for error messages).

    Raises:
        ConfigError: on a malformed override, or when a key goes through a non-table value.
    """
    origins: dict[str, str] = {}
    for item in overrides:
        key, value = parse_override(item)
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"--set {item!r}: `{where}` is a value, not a table", key=key)
            node = child
        node[parts[-1]] = value
        origins[key] = item
    return origins


def _split_toml_key(text: str) -> list[str]:
    parts = re.findall(r'"[^"]*"|\'[^\']*\'|[^.\s]+', text)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def find_key_line(text: str, key: str) -> int | None:
    """1-based line where dotted `key` is set in TOML `text` (or its table header), else None.

    A line scanner: understands ``[table]`` and ``[[array.of.tables]]`` headers (the k-th entry is
    ``array.of.tables[k]``) and (dotted) ``key = value`` lines, which covers XT configs; keys inside
    inline tables resolve to the line of the enclosing key.
    """
    target = key.split(".")
    table: list[str] = []
    arrays: dict[tuple[str, ...], int] = {}  # [[a.b]] headers seen so far: the k-th is a.b[k]
    best: tuple[int, int] | None = None  # (matched prefix length, line)
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = _HEADER_LINE.match(s)
        if m:
            table = _split_toml_key(m.group(1))
            if s.startswith("[["):  # an array of tables: msgspec names its k-th entry `a.b[k]`
                k = arrays.get(tuple(table), 0)
                arrays[tuple(table)] = k + 1
                table = table[:-1] + [f"{table[-1]}[{k}]"]
            full = table
        else:
            m = _KEY_LINE.match(s)
            if not m:
                continue
            full = table + _split_toml_key(m.group(1))
        if full == target:
            return lineno
        if target[: len(full)] == full and (best is None or len(full) > best[0]):
            best = (len(full), lineno)
    return best[1] if best else None


def _dotted(path: str | None) -> str:
    """msgspec path ``$.a.b[0]`` → dotted key ``a.b[0]``."""
    if not path:
        return ""
    return re.sub(r'\["([^"]*)"\]', r".\1", path[1:]).lstrip(".")


def _translate(err: msgspec.ValidationError, root: type) -> tuple[str, str]:
    """Turn a msgspec validation error into (dotted key, human message with what is allowed)."""
    m = _MSGSPEC_PATH.match(str(err))
    msg, key = m.group("msg"), _dotted(m.group("path"))
    parent_parts = re.findall(r"[^.\[\]]+|\[\d+\]", key)
    unknown = re.match(r"Object contains unknown field `([^`]*)`", msg)
    missing = re.match(r"Object missing required field `([^`]*)`", msg)
    cause = err.__cause__
    if unknown or missing:
        field = (unknown or missing).group(1)
        full = f"{key}.{field}" if key else field
        section = struct_at(root, parent_parts)  # an optional table (data.vision) is `T | None`
        names = struct_field_names(section) if section is not None else []
        where = f"[{key}]" if key else "the top level"
        if unknown:
            close = difflib.get_close_matches(field, names, n=1, cutoff=0.7)
            hint = f"; did you mean `{f'{key}.' if key else ''}{close[0]}`?" if close else ""
            return full, f"unknown key `{full}`{hint}; allowed keys in {where}: {', '.join(names)}"
        wanted = describe_type(type_at(root, parent_parts + [field]))
        return full, f"missing required key `{full}` ({wanted})"
    if isinstance(cause, ConfigFieldError):
        full = f"{key}.{cause.field}" if key else cause.field
        return full, f"bad value for `{full}`: {cause.detail}"
    if cause is not None:
        return key, f"bad value for `{key or '<top level>'}`: {cause}"
    tp = type_at(root, parent_parts)
    allowed = f"; allowed: {describe_type(tp)}" if tp is not None else ""
    return key, f"bad value for `{key or '<top level>'}`: {msg}{allowed}"


def _origin_of(key: str, origins: Mapping[str, str]) -> str | None:
    """The ``--set`` text responsible for `key`: exact key, else an enclosing table, else a
    key inside it; the last override wins within each kind."""
    items = list(origins.items())[::-1]
    for match in (lambda k: k == key, lambda k: key.startswith(k + "."),
                  lambda k: k.startswith(key + ".")):
        for k, text in items:
            if match(k):
                return text
    return None


def locate_key(key: str, *, path: str | Path | None = None, text: str | None = None,
               origins: Mapping[str, str] | None = None,
               overrides: Sequence[str] | None = None) -> tuple[str, int | None]:
    """Where dotted `key` was set, for the start of an error message.

    Args:
        key: dotted key (e.g. ``"model.config.hidden_size"``); "" for the config as a whole.
        path: the config file, or None.
        text: the file's TOML text (to find the line); None reads `path` (unreadable: no line).
        origins: dotted key → ``--set`` text (from `apply_overrides`); an override wins over the file.
        overrides: the ``--set`` strings, when `origins` is not at hand (parsed here).

    Returns:
        (``"--set 'KEY=VALUE'"``, ``"FILE:LINE"``, ``"FILE"`` or ``"config"``; the line or None).
        A key the file does not set resolves to its nearest enclosing table's header line.
    """
    if origins is None and overrides:
        try:
            origins = apply_overrides({}, overrides)
        except ConfigError:
            origins = {}
    origin = _origin_of(key, origins or {}) if key else None
    if origin is not None:
        return f"--set {origin!r}", None
    if path is None:
        return "config", None
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = None
    line = find_key_line(text, key) if text is not None and key else None
    return (f"{path}:{line}" if line else str(path)), line


def config_error_at(key: str, message: str, *, path: str | Path | None = None,
                    overrides: Sequence[str] = ()) -> ConfigError:
    """A `ConfigError` for a problem with `key` found after loading (e.g. by a model family).

    Locates `key` the way `load_config` does (`locate_key`): the ``--set`` override among
    `overrides` that set it, else its line in the TOML file `path`.

    Returns:
        ``ConfigError("WHERE: MESSAGE", key=key, path=path, line=LINE)`` (to raise).
    """
    where, line = locate_key(key, path=path, overrides=overrides)
    return ConfigError(f"{where}: {message}", key=key or None,
                       path=str(path) if path is not None else None, line=line)


def convert_config(data: Mapping[str, Any], cls: type[T], *, path: str | Path | None = None,
                   text: str | None = None, origins: Mapping[str, str] | None = None) -> T:
    """Validate a nested dict into Struct type `cls`, raising `ConfigError` on any problem.

    Args:
        data: nested dict as read from TOML (after overrides).
        cls: the top-level Struct type; every Struct in it must forbid unknown fields.
        path: the file `data` came from (for messages), or None.
        text: the file's TOML text (to locate the line of a bad key), or None.
        origins: dotted key → ``--set`` text for overridden keys (from `apply_overrides`).

    Returns:
        An instance of `cls`.

    Raises:
        ConfigError: naming the dotted key, its file and line or ``--set`` origin, and what is
            allowed.
        TypeError: if a Struct in `cls` accepts unknown fields (a programming error).
    """
    check_strict(cls)
    try:
        return msgspec.convert(dict(data), type=cls, strict=True)
    except msgspec.ValidationError as err:
        key, message = _translate(err, cls)
        where, line = locate_key(key, path=path, text=text, origins=origins)
        raise ConfigError(f"{where}: {message}", key=key or None,
                          path=str(path) if path is not None else None, line=line) from None


def load_config(path: str | Path | None, cls: type[T], overrides: Sequence[str] = ()) -> T:
    """Read a TOML config file, apply ``--set`` overrides and validate it into `cls`.

    Args:
        path: TOML file; None starts from `cls`'s defaults (overrides still apply).
        cls: top-level `msgspec.Struct` type (e.g. the CLI's composition of core, model and data
            sections); all Structs in it must forbid unknown fields (`ConfigStruct` does).
        overrides: ``"a.b=value"`` strings, applied in order after the file (see `parse_override`).

    Returns:
        A validated instance of `cls`.

    Raises:
        ConfigError: file missing or unreadable, TOML syntax error (with line), malformed override,
            unknown key, wrong type or out-of-range value; the message names the dotted key, file
            and line (or the override) and the allowed values.
    """
    text = None
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}", path=str(p)) from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config file {p}: {e}", path=str(p)) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            m = re.search(r"line (\d+)", str(e))
            line = int(m.group(1)) if m else None
            where = f"{p}:{line}" if line else str(p)
            raise ConfigError(f"{where}: TOML syntax error: {e}", path=str(p), line=line) from None
    origins = apply_overrides(data, overrides)
    return convert_config(data, cls, path=path, text=text, origins=origins)
