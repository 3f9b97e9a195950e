"""Dtype names in configs: one spelling kept, the other accepted.

XT's configs spell dtypes ``bf16``, ``fp16`` and ``fp32``; torch's names ``bfloat16``, ``float16``
and ``float32`` are accepted as well wherever a dtype is configured (``train.dtype``,
``parallel.param_dtype``, ``parallel.reduce_dtype``, ``rollout.dtype``), and a section's
``__post_init__`` normalises them to the short spelling (`normalize_dtype_field`), so the loaded
config, ``xt config show`` and the code that reads it see one spelling only. The sections declare
such a key as a ``Literal`` of both spellings (short ones first), so a TOML value outside them is
refused at load with the dotted key, file and line and the allowed spellings
(`xt.core.config.load_config`); `normalize_dtype` refuses the same values for a section built in
Python.
"""
from __future__ import annotations

from collections.abc import Sequence

import msgspec

from xt.core.config.base import ConfigFieldError

__all__ = ["DTYPES", "DTYPE_ALIASES", "TORCH_DTYPE_NAMES", "dtype_spellings", "normalize_dtype",
           "normalize_dtype_field"]

#: the dtype names XT's configs keep (and print)
DTYPES: tuple[str, ...] = ("bf16", "fp16", "fp32")
#: the other accepted spelling of each (torch's name) -> the kept one
DTYPE_ALIASES: dict[str, str] = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
#: the kept name -> the name of the `torch.dtype` (``getattr(torch, TORCH_DTYPE_NAMES["bf16"])``)
TORCH_DTYPE_NAMES: dict[str, str] = {v: k for k, v in DTYPE_ALIASES.items()}


def dtype_spellings(allowed: Sequence[str] = DTYPES, words: Sequence[str] = ()) -> str:
    """The accepted values as an error message lists them: ``'auto', 'bf16' (or 'bfloat16'), ...``.

    Args:
        allowed: the kept dtype names the key takes (a subset of `DTYPES`).
        words: other values the key takes, listed first (``"auto"``, ``"train"``).
    """
    parts = [repr(w) for w in words]
    parts += [f"{name!r} (or {TORCH_DTYPE_NAMES[name]!r})" for name in allowed]
    return ", ".join(parts)


def normalize_dtype(value: object, field: str, allowed: Sequence[str] = DTYPES, words: Sequence[str] = ()) -> str:
    """`value` with a dtype written in its kept spelling (``"bfloat16"`` -> ``"bf16"``).

    Args:
        value: the configured value.
        field: the key's name in its section (for the error).
        allowed: the kept dtype names the key takes (a subset of `DTYPES`).
        words: other values the key takes, returned as they are (``"auto"``).

    Returns:
        One of `words` or `allowed`.

    Raises:
        ConfigFieldError: `value` is none of them; the message lists every accepted spelling.
    """
    if isinstance(value, str):
        if value in words:
            return value
        name = DTYPE_ALIASES.get(value, value)
        if name in allowed:
            return name
    raise ConfigFieldError(field, f"must be one of {dtype_spellings(allowed, words)}, got {value!r}")


def normalize_dtype_field(section: msgspec.Struct, field: str, allowed: Sequence[str] = DTYPES,
                          words: Sequence[str] = ()) -> None:
    """In a (frozen) section's ``__post_init__``: check `field` and store it in its kept spelling
    (`normalize_dtype`; None is left alone, for a key that may be unset).

    Raises:
        ConfigFieldError: as `normalize_dtype`.
    """
    value = getattr(section, field)
    if value is not None:
        msgspec.structs.force_setattr(section, field, normalize_dtype(value, field, allowed, words))
