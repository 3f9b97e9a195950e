"""`xt train`'s closing ``step time`` line says something true for any number of steps: no
"first step 0.0s above it" when there was no warm-up cost or too few steps to measure one."""
from __future__ import annotations

import statistics

from xt.cli.step_time_text import WARMUP_SHOWN_S, step_time_line


def _rows(*times):
    return [{"step": i + 1, "step_time_s": t} for i, t in enumerate(times)]


def test_warm_up_reported_against_the_median_of_the_later_steps():
    times = (12.5, 2.0, 2.4, 2.2)
    median = statistics.median(times[1:])
    line = step_time_line(_rows(*times))
    assert line == (f"  step time   median {median:.2f}s; first step {times[0] - median:.1f}s above it (warm-up); "
                    f"slowest later step {max(times[1:]) / median:.2f}x the median")


def test_no_warm_up_cost_is_said_not_printed_as_zero():
    for first in (1.0, 1.0 + WARMUP_SHOWN_S / 2, 0.5):  # as fast as the rest, barely slower, faster
        line = step_time_line(_rows(first, 1.0, 1.0, 1.2))
        assert line == (f"  step time   median 1.00s; no warm-up cost (first step less than {WARMUP_SHOWN_S:g}s "
                        f"above it); slowest later step {1.2:.2f}x the median")
        assert "0.0s" not in line


def test_too_few_steps_for_a_median():
    assert step_time_line(_rows(3.25)) == "  step time   3.25s (one step: no warm-up step to tell apart)"
    assert step_time_line(_rows(9.5, 1.25)) == \
        "  step time   first step 9.50s, second 1.25s (too few steps for a median)"
    assert step_time_line([]) is None and step_time_line([{"step": 1, "step_time_s": None}]) is None
    # untimed rows (e.g. a step that was not timed) are skipped, not counted
    assert step_time_line([{"step": 1}] + _rows(2.0)) == "  step time   2.00s (one step: no warm-up step to tell apart)"
