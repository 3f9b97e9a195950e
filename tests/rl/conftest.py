"""Fixtures of the xt.rl tests; helpers live in rl_helpers.py (and the gloo DistContext in
tests/core/xtcore_gloo.py)."""
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
