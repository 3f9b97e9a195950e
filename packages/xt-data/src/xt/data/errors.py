"""Error types raised by `xt.data`.

Every error a user can cause with their data or configuration is a `DataError` whose message names
the file and line (``path:line: what is wrong``), the asset, or the config field involved.
"""
from __future__ import annotations

from xt.core.errors import XTError


class DataError(XTError, ValueError):
    """Bad data or data configuration (invalid record, missing file, unknown asset, bad field).

    An `xt.core.errors.XTError` (the ``xt`` command prints the message, no traceback) and a
    `ValueError`. Messages start with the location when there is one, e.g.
    ``train.jsonl:17: invalid JSON: ...``.
    """


class AssetError(DataError):
    """A pinned asset could not be fetched (client missing, offline with nothing cached, ...)."""


class ChecksumError(AssetError):
    """A downloaded or cached asset archive does not match its pinned SHA-256 checksum."""
