"""reasoning-gym tasks: offline generators and their scorers (extra ``xt-rl[gym]``, imported lazily).

reasoning-gym (Stojanovski et al. 2025, "REASONING GYM: Reasoning Environments for Reinforcement
Learning with Verifiable Rewards") generates tasks procedurally from a seed (``basic_arithmetic``,
``countdown``, ``gsm_symbolic``, ...; the data ship in the wheel, nothing is downloaded) and scores
an answer with the task's own verifier, in [0, 1] (some tasks give partial credit, e.g. a
malformed countdown expression scores 0.01).
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from xt.rl.rewards.answers import tagged_answer

__all__ = ["reasoning_gym_samples", "reasoning_gym_reward"]


def _reasoning_gym():
    try:
        import reasoning_gym
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("reasoning-gym tasks need reasoning-gym: pip install 'xt-rl[gym]'") from err
    return reasoning_gym


def reasoning_gym_samples(task: str, size: int, seed: int, **task_config: Any) -> list[dict[str, Any]]:
    """``size`` samples of the reasoning-gym task `task`, generated offline from `seed`.

    Args:
        task: a registered reasoning-gym dataset name, e.g. "basic_arithmetic", "countdown",
            "gsm_symbolic".
        size: samples, >= 1.
        seed: the generator's seed (same seed, same samples).
        task_config: the task's own config fields (e.g. ``min_terms=2`` for basic_arithmetic).

    Returns:
        Dicts with ``"question"`` (the prompt text), ``"answer"`` (a reference answer) and
        ``"metadata"`` (``"source_dataset"`` names the task for `reasoning_gym_reward`).

    Raises:
        ValueError: an unknown task or bad config (reasoning-gym's message), or ``size < 1``.
        ImportError: reasoning-gym is not installed.
    """
    if size < 1:
        raise ValueError(f"reasoning_gym_samples: size must be >= 1, got {size}")
    dataset = _reasoning_gym().create_dataset(task, size=size, seed=seed, **task_config)
    return [dict(entry) for entry in dataset]


@functools.lru_cache(maxsize=None)
def _scorer(task: str):
    return _reasoning_gym().get_score_answer_fn(task)


def reasoning_gym_reward(completion: str, sample: Mapping[str, Any]) -> float:
    """The task's score of the completion's ``<answer>...</answer>`` for `sample`, in [0, 1].

    A completion without the tags is scored as no answer (reasoning-gym gives 0, or its partial
    credit for a malformed answer).

    Args:
        completion: the model's text.
        sample: a `reasoning_gym_samples` entry (its ``metadata["source_dataset"]`` picks the scorer).

    Raises:
        KeyError: the sample has no ``metadata["source_dataset"]``.
        ImportError: reasoning-gym is not installed.
    """
    task = sample["metadata"]["source_dataset"]
    return float(_scorer(task)(tagged_answer(completion), dict(sample)))


def _warmup() -> None:
    """Import reasoning-gym before the first timed call (reward workers)."""
    _reasoning_gym()


reasoning_gym_reward.warmup = _warmup  # type: ignore[attr-defined]
