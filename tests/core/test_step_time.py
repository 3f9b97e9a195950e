"""`step_time_summary`: warm-up is the first step's excess over the median of the later steps, and
a stall after warm-up shows as the slowest later step's ratio to that median."""
from __future__ import annotations

import pytest

from xt.core.engine.metrics import step_time_summary


def test_warmup_and_stall():
    rows = [{"step_time_s": t} for t in (110.0, 2.0, 2.2, 19.0, 2.1, 1.9)]
    s = step_time_summary(rows)
    assert s["median_s"] == 2.1 and s["warmup_s"] == pytest.approx(107.9)
    assert s["max_after_first_s"] == 19.0 and s["max_over_median"] == pytest.approx(19.0 / 2.1)


def test_too_few_steps_and_missing_times():
    assert step_time_summary([{"step_time_s": 1.0}, {"step_time_s": 2.0}]) is None
    assert step_time_summary([{"step_time_s": None}] * 5) is None
    s = step_time_summary([{"step_time_s": 1.0}] * 4)
    assert s["warmup_s"] == 0.0 and s["max_over_median"] == 1.0
