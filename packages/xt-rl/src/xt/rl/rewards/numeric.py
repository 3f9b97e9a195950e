"""A reward without optional dependencies: is the completion's answer the reference number?

The answer is the text inside the last ``<answer>...</answer>`` when there is one, else the whole
completion; its last number (integer or decimal, optional sign), so that "3 + 4 = 7" answers 7, is
compared with the sample's ``answer`` as a number (1e-9 relative tolerance). Meant for small
models and arithmetic tasks (e.g. reasoning-gym's ``basic_arithmetic``), where asking for tags
would give no signal at first.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from xt.rl.rewards.answers import tagged_answer

__all__ = ["last_number", "numeric_answer_reward"]

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def last_number(text: str) -> float | None:
    """The last number in `text` (commas between digit groups ignored), or None."""
    found = _NUMBER.findall(re.sub(r"(?<=\d),(?=\d{3}\b)", "", text))
    return float(found[-1]) if found else None


def numeric_answer_reward(completion: str, sample: Mapping[str, Any]) -> float:
    """1.0 when the completion's answer (module docstring) equals ``sample["answer"]`` as a number, else 0.0.

    Raises:
        KeyError: the sample has no ``answer``.
        ValueError: the reference ``answer`` is not a number.
    """
    want = last_number(str(sample["answer"]))
    if want is None:
        raise ValueError(f"numeric_answer_reward: the reference answer {sample['answer']!r} is not a number")
    span = tagged_answer(completion)
    got = last_number(span if span is not None else completion)
    return 1.0 if got is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12) else 0.0
