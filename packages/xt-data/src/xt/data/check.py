"""`check_data`: a cheap look at a ``[data]`` source before anything expensive is built.

A training run reads and tokenizes its data only after the model exists; a typo in a path or a
malformed first record would then be found late. `check_data` opens the configured source and
parses the first records of every file, so those mistakes fail in a second, with ``file:line``.
`check_data_section` does the same for a section read from a TOML file, and prefixes an error
about a ``data.KEY`` with where that key is set.
"""
from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Sequence

from xt.core.config import locate_key
from xt.data.assets import asset_path
from xt.data.config import DataConfig
from xt.data.corpora import check_corpus
from xt.data.errors import DataError
from xt.data.sources import SourceStats, expand_paths, read_files
from xt.data.tokenizer import load_tokenizer

__all__ = ["check_data", "check_data_section"]

_DATA_KEY = re.compile(r"^(data\.[A-Za-z_]+)[:=]")


def _probe_file(path: Path, cfg: DataConfig, records: int, stats: SourceStats) -> int:
    """Parse up to `records` records of one file; returns how many were found."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    it = read_files([str(path)], cfg.format, cfg.mode, cfg.encoding, cfg.on_error, stats)
    try:
        return sum(1 for _ in itertools.islice(it, records))
    except OSError as e:  # e.g. a file that vanished or became unreadable meanwhile
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None


def check_data(cfg: DataConfig, records_per_file: int = 8) -> None:
    """Check that the source of `cfg` can be read and its first records parse.

    ``source="files"``: every path exists, every file opens, its format fits ``data.mode`` and its
    first `records_per_file` records parse (a bad one raises unless ``data.on_error="skip"``; a
    plain-text file is one record). A built-in corpus: the name fits ``data.mode`` and its pinned
    asset is available (fetched on first use). Nothing is tokenized.

    Raises:
        DataError: a missing or unreadable path (``PATH: cannot read: REASON``), a bad record
            (``FILE:LINE: what is wrong``), a format that does not fit the mode, or files that
            hold no documents at all (all empty or all skipped).
        AssetError: a built-in corpus that cannot be fetched (a `DataError`).
    """
    if cfg.source == "mix":
        from xt.data.mixing import mix_parts
        for part, _ in mix_parts(cfg):
            check_data(part, records_per_file)
        return
    if cfg.vision is not None:
        from xt.data.vl_dataset import check_vl_source
        check_vl_source(cfg, records_per_file)
        return
    if cfg.source != "files":
        check_corpus(cfg.source, cfg.mode)
        asset_path(cfg.source)
        return
    stats = SourceStats()
    found = sum(_probe_file(path, cfg, records_per_file, stats) for path in expand_paths(list(cfg.paths)))
    if found == 0:  # every file was read to its end without a document
        example = f": {stats.examples[0]}" if stats.examples else ""
        raise DataError(f"data.paths: no documents in {', '.join(cfg.paths)} ({stats.empty} empty, "
                        f"{stats.skipped} skipped{example})")


def check_data_section(cfg: DataConfig, config: str | Path | None, overrides: Sequence[str] = ()) -> None:
    """:func:`check_data` of the ``[data]`` section `cfg`, read from the TOML file `config` (or
    None) with the ``--set`` strings `overrides`, and its tokenizer (`load_tokenizer`: a name that
    is neither built-in, a folder nor a reachable hub id fails at once, listing the built-in names).

    Raises:
        DataError: as :func:`check_data`; a message about a ``data.KEY`` is prefixed with where that
            key is set (``FILE:LINE`` or the ``--set`` override), the same error type.
    """
    try:
        check_data(cfg)
        load_tokenizer(cfg.tokenizer)  # cached: the loader reuses it; a bad name fails here, offline
    except DataError as e:
        m = _DATA_KEY.match(str(e))
        if m is None:
            raise
        where, _ = locate_key(m.group(1), path=config, overrides=overrides)
        raise type(e)(f"{where}: {e}") from e
