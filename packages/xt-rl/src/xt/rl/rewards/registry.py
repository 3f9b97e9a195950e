"""Naming a reward function: built-in names and ``"pkg.module:function"`` import paths.

A reward function is ``fn(completion: str, sample: Mapping) -> float``: the model's completion
(text) and the sample it answers (a dict: the task's question, reference ``answer``, metadata).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from xt.core.errors import XTError

__all__ = ["BUILTIN_REWARDS", "RewardError", "reward_fn_path", "load_reward_fn"]

#: reward functions known by name (``rl.reward.function``)
BUILTIN_REWARDS = {
    "math_verify": "xt.rl.rewards.math_answers:math_verify_reward",
    "reasoning_gym": "xt.rl.rewards.gym_tasks:reasoning_gym_reward",
    "numeric_answer": "xt.rl.rewards.numeric:numeric_answer_reward",
}


class RewardError(XTError, ValueError):
    """A reward function cannot be loaded, or a call raised (and ``rl.reward.error_reward`` is
    unset). The message names ``rl.reward.function`` or the sample and the worker's traceback."""


def reward_fn_path(spec: str) -> str:
    """The ``"module:attr"`` path of `spec` (a built-in name or already a path).

    Raises:
        RewardError: `spec` is neither a built-in name nor of the form ``"pkg.module:function"``.
    """
    path = BUILTIN_REWARDS.get(spec, spec)
    module, sep, attr = path.partition(":")
    if not (sep and module and attr):
        raise RewardError(f"rl.reward.function = {spec!r}: use one of {sorted(BUILTIN_REWARDS)} or an "
                          "import path 'pkg.module:function'")
    return path


def load_reward_fn(spec: str) -> Callable[[str, Any], float]:
    """Import the reward function `spec` names (`reward_fn_path`).

    Raises:
        RewardError: the module cannot be imported, has no such attribute, or it is not callable;
            the message names ``rl.reward.function`` and the cause.
    """
    path = reward_fn_path(spec)
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise RewardError(f"rl.reward.function = {spec!r}: cannot import {module_name!r}: {err}") from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RewardError(f"rl.reward.function = {spec!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RewardError(f"rl.reward.function = {spec!r}: {path} is a {type(obj).__name__}, not a function")
    return obj
