"""Byte sizes written as numbers or strings (``5_000_000``, ``"5GB"``, ``"500MiB"``).

One parser for every size setting (the HF export's file size, weight buckets), so a config field
is checked at load time with the same rule the writer applies. The units follow transformers'
``max_shard_size`` (``transformers.utils.hub.convert_file_size_to_int``): decimal ``KB`` / ``MB`` /
``GB`` (10^3, 10^6, 10^9), binary ``KiB`` / ``MiB`` / ``GiB`` (2^10, 2^20, 2^30), and a lowercase
final ``b`` after a decimal unit (``"5Gb"``) meaning bits (divided by 8). XT also accepts ``TB`` /
``TiB``, a bare ``B``, spaces and decimals (``"1.5GB"``), and is case-insensitive otherwise.
"""
from __future__ import annotations

import re

__all__ = ["parse_size"]

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGTkmgt]?[Ii]?[Bb]?)\s*")


def parse_size(size: int | str, field: str = "max_shard_size") -> int:
    """``5_000_000`` or ``"5GB"`` / ``"500MiB"`` / ``"5Gb"`` (bits) -> bytes (module docstring).

    Args:
        size: bytes (an int) or a number with a unit (a str).
        field: the setting's name, used in the error message.

    Returns:
        The size in bytes, > 0.

    Raises:
        ValueError: a bool, float or other type, an unparsable string, or a size of 0 bytes or
            less (the message names `field`).
    """
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise ValueError(f"{field}: must be bytes (an integer) or a string like '5GB', '500MiB'; got {size!r}")
    if isinstance(size, int):
        n = size
    else:
        m = _SIZE.fullmatch(size)
        unit = m[2].upper() if m else None
        if m is None or unit not in _UNITS:
            raise ValueError(f"{field}: cannot parse {size!r}; use bytes or e.g. '5GB', '500MiB'")
        n = int(float(m[1]) * _UNITS[unit])
        if m[2].endswith("b") and len(unit) == 2:  # transformers: "5Gb" is 5 gigabits
            n //= 8
    if n <= 0:
        raise ValueError(f"{field}: must be > 0 bytes; got {size!r}")
    return n
