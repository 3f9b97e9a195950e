"""Fail-fast checks of `xt train`: the ``[model]`` and ``[data]`` sections, before any model is built.

Building a model, tokenizing data or starting processes costs seconds to minutes; a mistake in the
config should cost none of that. `preflight` builds the typed model config from the HF fields
(no weights), checks the ``init_from`` / ``hf_config`` paths and the resume path, and opens the
data source and parses its first records (`xt.data.check_data`). Every problem is reported where it was written: the
dotted key with the TOML file and line (or the ``--set`` override), or the data file and line.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from xt.cli.config import XTConfig
from xt.core.checkpoint import resolve_resume
from xt.core.config import locate_key
from xt.data import DataError, check_data
from xt.models import check_model_section

__all__ = ["preflight", "check_data_section"]

_DATA_KEY = re.compile(r"^(data\.[A-Za-z_]+)[:=]")


def preflight(cfg: XTConfig, config: str | Path | None, overrides: Sequence[str] = (),
              resume: str | None = None) -> None:
    """Check the model config, the data and the resume path of `cfg` (loaded from `config` with
    `overrides`; `resume` is ``--resume``, None falling back to ``checkpoint.resume``).

    Raises:
        xt.core.config.ConfigError: a missing ``model.init_from`` / ``model.hf_config`` path, or
            a bad model field (as ``model.config.FIELD``), with file and line.
        xt.data.DataError: unreadable, malformed or empty data (see `check_data_section`).
        xt.core.errors.CheckpointError: an explicit resume path that is not a complete checkpoint.
        FileNotFoundError: an explicit resume path that does not exist.
    """
    check_model_section(cfg.model, config, overrides)
    check_data_section(cfg, config, overrides)
    resolve_resume(resume if resume is not None else cfg.checkpoint.resume, cfg.train.out_dir)


def check_data_section(cfg: XTConfig, config: str | Path | None, overrides: Sequence[str] = ()) -> None:
    """Open the data source of `cfg` and parse its first records (`xt.data.check_data`).

    Raises:
        xt.data.DataError: a missing or unreadable file, a malformed record (``FILE:LINE``) or no
            documents at all; a message about a ``data.KEY`` is prefixed with where that key is set.
    """
    try:
        check_data(cfg.data)
    except DataError as e:
        m = _DATA_KEY.match(str(e))
        if m is None:
            raise
        where, _ = locate_key(m.group(1), path=config, overrides=overrides)
        raise type(e)(f"{where}: {e}") from e
