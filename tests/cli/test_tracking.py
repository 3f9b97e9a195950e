"""`[tracking]`: a tracker whose package is missing fails before any work, naming the key; W&B
offline logs the metrics (the TensorBoard events: tests/cli/test_eval.py)."""
from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pytest
from rich.console import Console

from cli_helpers import metric_rows


def test_missing_tracker_package_is_one_config_error(monkeypatch):
    from xt.core.config import ConfigError, TrackingConfig
    from xt.core.engine import tracking

    real = importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(ConfigError, match=r"tracking.wandb: the 'wandb' package is not installed; pip install wandb"):
        tracking.check_tracking(TrackingConfig(wandb="offline"))
    tracking.check_tracking(TrackingConfig())  # nothing enabled: nothing needed


def test_wandb_offline_run_gets_the_metrics(tiny_run: Path, tmp_path: Path, monkeypatch):
    """W&B in offline mode (no network): a local run under out_dir/wandb whose summary holds the
    last step's metrics.jsonl values (read from the live run just before it finishes)."""
    pytest.importorskip("wandb")
    from xt.cli.train import run_train
    from xt.core.engine.tracking import Trackers

    seen: dict = {}
    finish = Trackers.close

    def close(self):
        seen.update({k: self.wandb_run.summary[k] for k in ("loss", "lr", "grad_norm", "_step")})
        finish(self)
    monkeypatch.setattr(Trackers, "close", close)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_train(tiny_run, ["train.steps=2", "checkpoint.every_steps=0", "checkpoint.hf_export=false",
                         "sample.max_new_tokens=0", "tracking.wandb='offline'", "tracking.run_name='tiny'"],
              console=Console(file=io.StringIO()))
    last = metric_rows(tmp_path / "run")[-1]
    assert seen == {"loss": last["loss"], "lr": last["lr"], "grad_norm": last["grad_norm"], "_step": 2}
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
