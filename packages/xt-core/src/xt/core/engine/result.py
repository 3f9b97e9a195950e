"""What `Trainer.fit` returns: `TrainResult`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TrainResult"]


@dataclass
class TrainResult:
    """Outcome of `Trainer.fit`.

    Attributes:
        step: optimizer steps completed.
        metrics: the last step's metrics (empty if no step ran).
        metrics_path, plot_path: ``out_dir/metrics.jsonl`` and ``out_dir/loss.png``.
        checkpoint: the last checkpoint saved or resumed from, or None.
        hf_path: the HF export folder, or None if not exported.
        wall_s: seconds spent in `fit`.
        stopped_early: True when the loader ran out before the configured steps.
        resumed_from: the checkpoint this run started from, or None (fresh start).
        interrupted: ``"SIGINT"`` / ``"SIGTERM"`` when a signal stopped the run (a checkpoint of
            the last step was saved; no HF export), else None.
        out_of_time: True when ``train.max_minutes`` stopped the run (checkpoint and export done).
    """

    step: int
    metrics: dict[str, Any]
    metrics_path: Path
    plot_path: Path | None
    checkpoint: Path | None
    hf_path: Path | None
    wall_s: float
    stopped_early: bool = False
    resumed_from: Path | None = field(default=None)
    interrupted: str | None = None
    out_of_time: bool = False
