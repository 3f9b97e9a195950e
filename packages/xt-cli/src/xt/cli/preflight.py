"""Fail-fast checks of `xt train`: the ``[model]`` and ``[data]`` sections, before any model is built.

Building a model, tokenizing data or starting processes costs seconds to minutes; a mistake in the
config should cost none of that. `preflight` runs the sections' own checks: the typed model config
from the HF fields, no weights, and the ``init_from`` / ``hf_config`` paths
(`xt.models.check_model_section`); the data source and its first records
(`xt.data.check_data_section`); the resume path (`xt.core.checkpoint.resolve_resume`). Every
problem is reported where it was written: the dotted key with the TOML file and line (or the
``--set`` override), or the data file and line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from xt.cli.config import XTConfig
from xt.cli.vl_check import check_sample_image, check_vision_data
from xt.core.checkpoint import resolve_resume
from xt.core.engine.tracking import check_tracking
from xt.data import DataError, check_data, check_data_section, eval_data_config
from xt.models import check_model_section
from xt.models.section_check import check_part_names

__all__ = ["preflight"]


def preflight(cfg: XTConfig, config: str | Path | None, overrides: Sequence[str] = (),
              resume: str | None = None) -> None:
    """Check the model config, the data and the resume path of `cfg` (loaded from `config` with
    `overrides`; `resume` is ``--resume``, None falling back to ``checkpoint.resume``).

    Raises:
        xt.core.config.ConfigError: a missing ``model.init_from`` / ``model.hf_config`` path, a
            bad model field (as ``model.config.FIELD``), a part name of ``model.freeze`` /
            ``optim.part_lr`` the model lacks, or ``[data.vision]`` that does not fit the model
            (`xt.cli.vl_check`), or a `sample.image` that cannot be shown, with file and line.
        xt.data.DataError: unreadable, malformed or empty data (`xt.data.check_data_section`), or
            held-out ``eval.paths`` of that kind.
        xt.core.errors.CheckpointError: an explicit resume path that is not a complete checkpoint.
        FileNotFoundError: an explicit resume path that does not exist.
    """
    check_model_section(cfg.model, config, overrides)
    check_part_names(cfg.model, list(cfg.optim.part_lr), "optim.part_lr", config, overrides)
    check_tracking(cfg.tracking)
    check_data_section(cfg.data, config, overrides)
    check_vision_data(cfg.model, cfg.data, config, overrides)
    check_sample_image(cfg.sample.image, cfg.sample.max_new_tokens, cfg.data, config, overrides)
    if cfg.eval.paths:
        try:
            check_data(eval_data_config(cfg.data, cfg.eval))
        except DataError as e:
            raise type(e)(f"eval.paths: {e}") from e
    resolve_resume(resume if resume is not None else cfg.checkpoint.resume, cfg.train.out_dir)
