"""Experiment trackers fed with each step's metrics: TensorBoard event files and W&B runs.

`Trackers` is built from a `TrackingConfig` on the main rank and gets every metrics record the
Trainer writes to ``metrics.jsonl`` (which stays the reference log). Numeric values become scalars
at the record's step (a list such as ``expert_load`` and nulls are skipped; ``eval_loss`` and
friends appear on evaluation steps). Both libraries are optional and imported only when enabled;
`check_tracking` says at once, before any model is built, when one is missing.
"""
from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xt.core.config import ConfigError, TrackingConfig

__all__ = ["Trackers", "check_tracking", "scalars"]

_PACKAGES = {"tensorboard": ("tensorboard", "xt-core[tensorboard]"), "wandb": ("wandb", "xt-core[wandb]")}


def check_tracking(cfg: TrackingConfig) -> None:
    """Check that the trackers `cfg` enables can be imported.

    Raises:
        xt.core.config.ConfigError: naming ``tracking.tensorboard`` / ``tracking.wandb`` and the
            package to install.
    """
    wanted = [k for k, on in (("tensorboard", cfg.tensorboard), ("wandb", cfg.wandb != "off")) if on]
    for key in wanted:
        module, extra = _PACKAGES[key]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"tracking.{key}: the {module!r} package is not installed; "
                              f"pip install {module} (or {extra!r}), or turn it off")


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric values of a metrics record, as floats (bools and ``step`` excluded)."""
    out = {}
    for k, v in record.items():
        if k == "step" or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


class Trackers:
    """The enabled trackers of one run (call only on the main rank; `close` at the end).

    Args:
        cfg: the ``[tracking]`` section.
        out_dir: the run folder (``tensorboard/`` and ``wandb/`` go under it).
        start_step: the step the run starts after (a resume purges TensorBoard events after it).
        config: the run's resolved config as a dict, recorded by W&B.

    Raises:
        xt.core.config.ConfigError: a tracker's package is missing (`check_tracking`).
    """

    def __init__(self, cfg: TrackingConfig, out_dir: str | Path, start_step: int = 0,
                 config: Mapping[str, Any] | None = None) -> None:
        check_tracking(cfg)
        out = Path(out_dir)
        name = cfg.run_name or out.resolve().name
        self.tb = self.wandb_run = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        if cfg.wandb != "off":
            import wandb
            (out / "wandb").mkdir(parents=True, exist_ok=True)
            self.wandb_run = wandb.init(project=cfg.project, name=name, dir=str(out), mode=cfg.wandb,
                                        config=dict(config or {}), resume="allow", id=_wandb_id(out))

    def log(self, record: Mapping[str, Any]) -> None:
        """Log one step's metrics record (it must hold ``step``)."""
        values, step = scalars(record), int(record["step"])
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb_run is not None:
            self.wandb_run.log(values, step=step, commit=True)  # a record is a whole step

    def close(self) -> None:
        """Flush and close the writers."""
        if self.tb is not None:
            self.tb.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _wandb_id(out: Path) -> str:
    """A stable W&B run id per run folder, so a resumed run continues the same W&B run."""
    import hashlib
    return hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]
