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

from xt.cli.build import hf_dict
from xt.cli.config import ModelSection, XTConfig
from xt.cli.weights import is_hf_folder, is_xt_weights
from xt.core.checkpoint import resolve_resume
from xt.core.config import ConfigError, config_error_at, locate_key
from xt.data import DataError, check_data
from xt.models import ModelConfigError, config_from_hf

__all__ = ["preflight", "check_model_section", "check_data_section"]

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


def _check_paths(section: ModelSection, config: str | Path | None, overrides: Sequence[str]) -> None:
    if section.init_from:
        p = Path(section.init_from)
        if not p.is_dir():
            raise config_error_at("model.init_from", f"`model.init_from` = {section.init_from!r}: no such "
                                  "folder (give an HF checkpoint folder or XT weights from `xt convert`)",
                                  path=config, overrides=overrides)
        if not (is_hf_folder(p) or is_xt_weights(p)):
            raise config_error_at("model.init_from", f"`model.init_from` = {section.init_from!r} is not a "
                                  "checkpoint folder: expected config.json with *.safetensors (HF) or "
                                  "with model/ (XT weights from `xt convert`)", path=config, overrides=overrides)
    if section.hf_config and not Path(section.hf_config).exists():
        raise config_error_at("model.hf_config", f"`model.hf_config` = {section.hf_config!r}: no such file "
                              "or folder", path=config, overrides=overrides)


def _located(err: ModelConfigError, section: ModelSection, config: str | Path | None,
             overrides: Sequence[str]) -> ConfigError:
    """The model family's error, re-pointed at the TOML entry the bad value came from."""
    field = err.field
    if section.config is not None or (field and field in section.overrides):
        table = "model.config" if section.config is not None else "model.overrides"
        key = f"{table}.{field}" if field else table
        return config_error_at(key, f"bad value for `{key}`: {err.detail}", path=config, overrides=overrides)
    key = "model.init_from" if section.init_from else "model.hf_config"
    value = section.init_from or section.hf_config
    return config_error_at(key, f"`{key}` = {value!r}: {err}", path=config, overrides=overrides)


def check_model_section(section: ModelSection, config: str | Path | None, overrides: Sequence[str] = ()) -> None:
    """Build the typed model config of `section` (HF fields only: no model, no weights).

    Args:
        section: the ``[model]`` section.
        config: the TOML file it was read from (for file and line), or None.
        overrides: the ``--set`` strings applied to it.

    Raises:
        xt.core.config.ConfigError: ``model.init_from`` is no checkpoint folder, ``model.hf_config``
            does not exist, or the model family rejects a field (wrong type, out of range,
            inconsistent, unknown architecture): the message names ``model.config.FIELD`` (or
            ``model.overrides.FIELD`` / the config.json), the file and the line.
    """
    _check_paths(section, config, overrides)
    try:
        config_from_hf(hf_dict(section))
    except ModelConfigError as e:
        raise _located(e, section, config, overrides) from e


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
