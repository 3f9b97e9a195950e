"""The shape key under which grouped-GEMM kernel choices and Triton configs are tuned.

A training run's micro-batches differ in token count: packing leaves some far from full (measured
on the H200, Qwen3-MoE 128 experts top-8, 4k micro-batches: 91 to 4,096 tokens within the first
steps), so the routed rows ``R = T * K`` change every step. Tuning per row count, or per power
of two of the rows per expert, re-tuned whenever a new size appeared: Triton timed all of its
candidates again (~2.3 s per kernel, ~8 kernels) and a step took 20 s instead of 2 long after
warm-up (``benchmarks/train/stall_probe.py``).

So there are two buckets per model shape:

* `SMALL` (fewer than `SMALL_ROWS_PER_EXPERT` rows per expert): never tuned; a fixed kernel
  choice and tile config (such calls are cheap whatever the config);
* `LARGE`: tuned once, on the first large call, and reused for every large size.
"""
from __future__ import annotations

__all__ = ["SMALL", "LARGE", "SMALL_ROWS_PER_EXPERT", "rows_bucket"]

#: the two buckets
SMALL, LARGE = 0, 1
#: rows per expert from which a call is tuned (one 64-row tile per expert and more)
SMALL_ROWS_PER_EXPERT = 64


def rows_bucket(rows: int, num_experts: int) -> int:
    """`LARGE` when ``rows / num_experts >= SMALL_ROWS_PER_EXPERT``, else `SMALL`.

    Args:
        rows: routed rows R (>= 0).
        num_experts: E (>= 1; 0 is treated as 1).
    """
    return LARGE if max(rows, 0) >= SMALL_ROWS_PER_EXPERT * max(num_experts, 1) else SMALL
