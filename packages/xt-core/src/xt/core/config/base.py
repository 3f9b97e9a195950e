"""Base class and error types shared by every XT config section.

Every section of an XT config is a `ConfigStruct`: a frozen, keyword-only `msgspec.Struct` that
rejects unknown fields. Range checks live in `__post_init__` and raise `ConfigFieldError` naming the
offending field, so the same check fires whether a section is built in Python or loaded from TOML
(`xt.core.config.load_config` turns it into a `ConfigError` naming the dotted key, file and line).
`ConfigError` is defined in `xt.core.errors` (the root of XT's user-facing errors) and re-exported here.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from xt.core.errors import ConfigError

__all__ = ["ConfigError", "ConfigFieldError", "ConfigStruct", "require", "require_in"]


class ConfigFieldError(ValueError):
    """Raised by a section's `__post_init__` when one field holds a bad value.

    Args:
        field: the field's name within its section (e.g. ``"warmup_steps"``).
        message: what is wrong and what is allowed (e.g. ``"must be >= 0, got -3"``).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"`{field}` {message}")
        self.field = field
        self.detail = message


def require(ok: bool, field: str, message: str) -> None:
    """Raise `ConfigFieldError(field, message)` unless `ok`.

    Args:
        ok: the condition that must hold.
        field: name of the field being checked.
        message: description of the allowed values, shown to the user.

    Raises:
        ConfigFieldError: if `ok` is false.
    """
    if not ok:
        raise ConfigFieldError(field, message)


def require_in(value: Any, allowed: Iterable[Any], field: str) -> None:
    """Check that `value` is one of `allowed`.

    Raises:
        ConfigFieldError: naming `field`, the bad value and the allowed ones.
    """
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigFieldError(field, f"must be one of {allowed!r}, got {value!r}")


class ConfigStruct(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Base for config sections: frozen, keyword-only, unknown fields rejected at load time.

    Subclass it for every section (the options are inherited). Frozen instances can be used as
    field defaults of a parent section (``train: TrainConfig = TrainConfig()``); derive modified
    copies with `msgspec.structs.replace`.
    """
