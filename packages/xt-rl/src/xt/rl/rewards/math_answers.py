"""Math answer checking with math-verify (extra ``xt-rl[math]``, imported lazily).

`math_verify_reward` compares the completion's final answer with the sample's reference answer
symbolically (math-verify parses LaTeX and plain expressions into sympy and compares them, so
``\\frac{2}{4}``, ``0.5`` and ``1/2`` agree). math-verify bounds its own parsing and comparison
time with ``signal.alarm``, which works only on the main thread of a process: on the main thread
its timeouts are kept (`PARSE_TIMEOUT_S`, `VERIFY_TIMEOUT_S`), elsewhere they are turned off and
the caller must bound the time, as `xt.rl.rewards.pool.RewardPool` does by running each call on a
worker process's main thread with a pool-level timeout.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from xt.rl.rewards.answers import tagged_answer

__all__ = ["math_verify_reward", "PARSE_TIMEOUT_S", "VERIFY_TIMEOUT_S"]

PARSE_TIMEOUT_S = 5
VERIFY_TIMEOUT_S = 5


def _math_verify():
    try:
        import math_verify
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("the math_verify reward needs math-verify: pip install 'xt-rl[math]'") from err
    return math_verify


def _parse(mv, text: str, timeout: int | None) -> list:
    got = mv.parse(text, parsing_timeout=timeout)
    return got if got else mv.parse(f"${text}$", parsing_timeout=timeout)


def math_verify_reward(completion: str, sample: Mapping[str, Any]) -> float:
    """1.0 if the completion's final answer equals ``sample["answer"]`` (math-verify), else 0.0.

    The prediction is the last ``<answer>...</answer>`` span when there is one, else the whole
    completion (math-verify then takes the last ``\\boxed{}`` or final expression). A completion
    with no parsable answer scores 0.0.

    Args:
        completion: the model's text.
        sample: holds ``"answer"``, the reference (LaTeX or plain, e.g. ``"\\frac{1}{2}"``, ``"20"``).

    Raises:
        KeyError: the sample has no ``"answer"``.
        ValueError: the reference answer cannot be parsed (a data problem, named).
        ImportError: math-verify is not installed.
    """
    mv = _math_verify()
    on_main = threading.current_thread() is threading.main_thread()
    parse_t, verify_t = (PARSE_TIMEOUT_S, VERIFY_TIMEOUT_S) if on_main else (None, None)
    gold_text = str(sample["answer"])
    gold = _parse(mv, gold_text, parse_t)
    if not gold:
        raise ValueError(f"math_verify_reward: cannot parse the reference answer {gold_text!r}")
    tagged = tagged_answer(completion)
    pred = _parse(mv, tagged, parse_t) if tagged is not None else mv.parse(completion, parsing_timeout=parse_t)
    return 1.0 if pred and mv.verify(gold, pred, timeout_seconds=verify_t) else 0.0


def _warmup() -> None:
    """Import math-verify and sympy's parser before the first timed call (reward workers)."""
    mv = _math_verify()
    mv.verify(mv.parse("$1$"), mv.parse("$1$"))


math_verify_reward.warmup = _warmup  # type: ignore[attr-defined]
