"""The ``step time`` line of `xt train`'s closing summary, from the run's metrics rows.

With three or more timed steps it reports `xt.core.engine.metrics.step_time_summary`: the median
of the steps after the first, the first step's excess over it (the warm-up: compilation,
autotuning, caches) and the slowest later step. With fewer steps there is no median to hold the
first step against, and a first step no slower than the rest has no warm-up cost: the line says
so instead of printing a warm-up of "0.0s".
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from xt.core.engine.metrics import step_time_summary

__all__ = ["step_time_line", "WARMUP_SHOWN_S"]

#: the smallest warm-up (seconds) the line reports as one; below it the first step "has no warm-up cost"
WARMUP_SHOWN_S = 0.05


def step_time_line(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The summary's ``step time`` line for the metrics `rows` of this launch (``step_time_s`` in
    seconds per optimizer step, rows without it skipped), or None when no step was timed.

    * 1 timed step: its time, and that there is no warm-up step to tell apart;
    * 2: both times (too few for a median);
    * 3 or more: the median of the later steps, the first step's excess over it when that is at
      least `WARMUP_SHOWN_S` (else "no warm-up cost"), and the slowest later step over the median.
    """
    head = "  step time   "
    s = step_time_summary(rows)
    if s is None:  # fewer than 3 timed steps
        times = [float(r["step_time_s"]) for r in rows if r.get("step_time_s") is not None]
        if len(times) == 1:
            return f"{head}{times[0]:.2f}s (one step: no warm-up step to tell apart)"
        if len(times) == 2:
            return f"{head}first step {times[0]:.2f}s, second {times[1]:.2f}s (too few steps for a median)"
        return None
    if s["warmup_s"] >= WARMUP_SHOWN_S:
        first = f"first step {s['warmup_s']:.1f}s above it (warm-up)"
    else:
        first = f"no warm-up cost (first step less than {WARMUP_SHOWN_S:g}s above it)"
    return f"{head}median {s['median_s']:.2f}s; {first}; slowest later step {s['max_over_median']:.2f}x the median"
