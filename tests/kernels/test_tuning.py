"""The grouped-GEMM tuning key: one tuned bucket per model shape, so packed micro-batches of any
token count never re-tune after warm-up; small calls are never tuned."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from xt.kernels.moe.tuning import LARGE, SMALL, SMALL_ROWS_PER_EXPERT, rows_bucket


@given(rows=st.integers(0, 10**7), experts=st.integers(1, 512))
def test_two_buckets_split_at_the_threshold(rows, experts):
    assert rows_bucket(rows, experts) == (LARGE if rows >= SMALL_ROWS_PER_EXPERT * experts else SMALL)


def test_training_micro_batches_share_one_tuned_key():
    # Qwen3-MoE, 128 experts top-8: every micro-batch from 1,024 to 262,144 tokens shares one key,
    # the 91-1,023-token leftovers packing leaves are never tuned
    assert {rows_bucket(t * 8, 128) for t in range(1024, 262145, 97)} == {LARGE}
    assert {rows_bucket(t * 8, 128) for t in range(0, 1024)} == {SMALL}
