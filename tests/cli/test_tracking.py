"""`[tracking]`: TensorBoard event files hold the metrics.jsonl values; a tracker whose package is
missing fails before any work, naming the key."""
from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pytest
from rich.console import Console

from cli_helpers import metric_rows

SETS = ["train.steps=2", "checkpoint.every_steps=0", "checkpoint.hf_export=false", "sample.max_new_tokens=0"]


def test_tensorboard_events_equal_the_metrics(tiny_run: Path, tmp_path: Path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from xt.cli.train import run_train

    run_train(tiny_run, SETS + ["tracking.tensorboard=true"], console=Console(file=io.StringIO()))
    rows = metric_rows(tmp_path / "run")
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "aux_loss", "grad_norm", "lr", "tokens_per_s", "num_tokens"} <= tags and "expert_load" not in tags
    for tag in ("loss", "grad_norm", "lr", "num_tokens"):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [r["step"] for r in rows]
        assert [e.value for e in events] == pytest.approx([r[tag] for r in rows], rel=1e-6)  # stored as float32


def test_missing_tracker_package_is_one_config_error(monkeypatch):
    from xt.core.config import ConfigError, TrackingConfig
    from xt.core.engine import tracking

    real = importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(ConfigError, match=r"tracking.wandb: the 'wandb' package is not installed; pip install wandb"):
        tracking.check_tracking(TrackingConfig(wandb="offline"))
    tracking.check_tracking(TrackingConfig())  # nothing enabled: nothing needed
