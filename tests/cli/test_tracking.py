"""`[tracking]`: a tracker whose package is missing fails before any work, naming the key (the
TensorBoard events themselves: tests/cli/test_eval.py)."""
from __future__ import annotations

import importlib.util

import pytest


def test_missing_tracker_package_is_one_config_error(monkeypatch):
    from xt.core.config import ConfigError, TrackingConfig
    from xt.core.engine import tracking

    real = importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(ConfigError, match=r"tracking.wandb: the 'wandb' package is not installed; pip install wandb"):
        tracking.check_tracking(TrackingConfig(wandb="offline"))
    tracking.check_tracking(TrackingConfig())  # nothing enabled: nothing needed
