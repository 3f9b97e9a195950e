"""Fail-fast check of a ``[model]`` section, with errors pointing at the TOML entry.

Building a model or loading weights costs seconds to minutes; a mistake in the section should
cost none of that. :func:`check_model_section` checks the ``init_from`` / ``hf_config`` paths and
builds the family's typed config from the HF fields (no weights), and reports a problem where it
was written: the dotted key with the TOML file and line, or the ``--set`` override.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from xt.core.config import ConfigError, config_error_at
from xt.models.common.hf_config import ModelConfigError
from xt.models.section import ModelSection, model_parts, section_config
from xt.models.weights import is_hf_folder, is_xt_weights

__all__ = ["check_model_section", "check_part_names"]


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
        section: the ``[model]`` section (the TOML table ``model``).
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
        section_config(section)
    except ModelConfigError as e:
        raise _located(e, section, config, overrides) from e
    check_part_names(section, section.freeze, "model.freeze", config, overrides)


def check_part_names(section: ModelSection, names, key: str, config: str | Path | None,
                     overrides: Sequence[str] = ()) -> None:
    """Check that every entry of `names` (``model.freeze``, the keys of ``optim.part_lr``) is a
    named part of the model `section` builds.

    Raises:
        xt.core.config.ConfigError: naming `key`, the file and line, and the parts the model has.
    """
    parts = model_parts(section)
    bad = [n for n in names if n not in parts]
    if bad:
        allowed = f"its parts are {sorted(parts)}" if parts else "this model family has no named parts"
        raise config_error_at(key, f"`{key}`: no part {', '.join(map(repr, bad))} in this model; {allowed}",
                              path=config, overrides=overrides)
