"""Typed messages between the parts of the RL loop (msgspec structs, msgpack on the wire).

The synchronous loop (`xt.rl.loop.grpo.GRPOLoop`) passes them by value between its rollout, reward
and trainer objects, so each part can later live in its own process or Ray actor and exchange the
same messages as bytes (`xt.rl.rollout.protocol.encode` / ``decode``). The rollout messages are in
`xt.rl.rollout.protocol`.
"""
from __future__ import annotations

from typing import Any

import msgspec

from xt.rl.rollout.protocol import IntArray

__all__ = ["RewardRequest", "RewardResult", "TrainSample", "TrainRequest", "TrainResult"]


class RewardRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Score completions. ``samples[i]`` is the task sample (question, answer, metadata) completion i answers."""
    completions: list[str]
    samples: list[dict[str, Any]]


class RewardResult(msgspec.Struct, frozen=True, kw_only=True):
    """One reward per completion (NaN allowed: excluded from the advantages), the pool's outcome
    counts (``ok`` / ``timeout`` / ``error``) and the wall time."""
    rewards: list[float]
    counts: dict[str, int]
    seconds: float


class TrainSample(msgspec.Struct, frozen=True, kw_only=True):
    """One sample for the trainer: token ids, its advantage, the rollout's log-probs, whether it counts
    in the loss (``keep``: DAPO's overlong filter) and the rollout's routed experts (replay)."""
    prompt_ids: list[int]
    response_ids: list[int]
    advantage: float
    rollout_log_probs: list[float]
    keep: bool = True
    routed_experts: IntArray | None = None


class TrainRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The samples of one RL step, in order (the trainer splits them into updates and micro-batches)."""
    samples: list[TrainSample]
    step: int


class TrainResult(msgspec.Struct, frozen=True, kw_only=True):
    """The trainer's metrics of the step (floats; None where undefined) and its new weight version."""
    metrics: dict[str, float | None]
    weight_version: int
