"""DAPO's data-side pieces: dynamic sampling, overlong reward shaping and overlong filtering.

Shape legend: N samples.

From Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale":

- **Dynamic sampling**: a group whose rewards are all equal (all right, all wrong) has zero
  group-relative advantage and gives no gradient, so it is dropped and more prompts are sampled
  until the batch is full. `dynamic_sampling` says which samples to keep and how many more
  groups to draw.
- **Soft overlong punishment**: with the budget ``L_max`` (``rl.max_response_tokens``) and the
  buffer ``L_cache`` (``rl.overlong.buffer_tokens``), a response of ``|y|`` tokens gets the
  length reward ``0`` if ``|y| <= L_max − L_cache``, ``((L_max − L_cache) − |y|) / L_cache`` up to
  ``L_max``, and ``−1`` beyond, times ``rl.overlong.penalty``; it is added to the task reward
  (`overlong_penalty`).
- **Overlong filtering**: truncated responses (no end-of-sequence within the budget) are masked
  out of the loss (`overlong_keep`, into `xt.rl.batch.pack_samples`' ``keep``).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from xt.rl.advantages import group_index, group_spread

__all__ = ["DynamicSample", "dynamic_sampling", "overlong_penalty", "overlong_keep"]


class DynamicSample(NamedTuple):
    """Result of `dynamic_sampling`.

    Attributes:
        keep: ``[N]`` bool, the samples of the kept groups (rewards' shape flattened).
        kept_groups: ``[K]`` int64 indices of the kept groups (in `group_index` order: sorted ids,
            or rows of ``[B, G]`` rewards).
        num_groups: groups seen.
        num_kept: K, groups with at least two distinct finite rewards.
        groups_needed: how many more kept groups the batch still needs, ``max(0, target − K)``
            (0 without a target).
        groups_to_draw: how many more prompts (groups) to sample to get them at the observed keep
            rate ``K / num_groups``: ``ceil(groups_needed / rate)``; with no kept group at all the
            rate is taken as ``1 / num_groups``.
    """
    keep: torch.Tensor
    kept_groups: torch.Tensor
    num_groups: int
    num_kept: int
    groups_needed: int
    groups_to_draw: int


def dynamic_sampling(rewards: torch.Tensor, group_ids: torch.Tensor | None = None, *,
                     target_groups: int | None = None) -> DynamicSample:
    """Drop the groups without reward spread and say how many groups to over-sample (module docstring).

    A group is kept when its finite rewards are not all equal (NaN/inf rewards are ignored for the
    test, as `xt.rl.advantages` excludes them), i.e. exactly when its advantages are not all 0.

    Args:
        rewards: ``[N]`` with ``group_ids [N]``, or ``[B, G]`` (one group per row).
        group_ids: the group of each sample, or None for ``[B, G]`` rewards.
        target_groups: groups the training batch should hold (e.g. prompts per step), or None.

    Returns:
        `DynamicSample`.

    Raises:
        ValueError: bad shapes, or a negative target.
    """
    if target_groups is not None and target_groups < 0:
        raise ValueError(f"dynamic_sampling: target_groups must be >= 0, got {target_groups}")
    r, g, n = group_index(rewards, group_ids)
    kept = group_spread(r, g, n)
    k = int(kept.sum())
    needed = max(0, target_groups - k) if target_groups is not None else 0
    rate = k / n if k else 1.0 / max(n, 1)
    return DynamicSample(keep=kept[g], kept_groups=kept.nonzero()[:, 0], num_groups=n, num_kept=k,
                         groups_needed=needed, groups_to_draw=math.ceil(needed / rate) if needed else 0)


def overlong_penalty(lengths: torch.Tensor, *, max_tokens: int, buffer_tokens: int,
                     factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment of each response (module docstring), float32 ``[N]`` in
    ``[−factor, 0]``.

    Args:
        lengths: ``[N]`` response lengths in tokens.
        max_tokens: L_max (``rl.max_response_tokens``), > 0.
        buffer_tokens: L_cache (``rl.overlong.buffer_tokens``), in ``[0, max_tokens]``; 0 gives
            only the hard ``−factor`` beyond L_max.
        factor: >= 0 (``rl.overlong.penalty``).

    Raises:
        ValueError: values out of range.
    """
    if not (max_tokens > 0 and 0 <= buffer_tokens <= max_tokens and factor >= 0):
        raise ValueError("overlong_penalty: need max_tokens > 0, 0 <= buffer_tokens <= max_tokens and factor >= 0; "
                         f"got {max_tokens}, {buffer_tokens}, {factor} (rl.max_response_tokens, "
                         "rl.overlong.buffer_tokens, rl.overlong.penalty)")
    length = torch.as_tensor(lengths).double()
    start = max_tokens - buffer_tokens
    soft = (start - length) / buffer_tokens if buffer_tokens else torch.zeros_like(length)
    out = torch.where(length <= start, 0.0, torch.where(length <= max_tokens, soft, -1.0))
    return (out * factor).float()


def overlong_keep(lengths: torch.Tensor | None = None, *, truncated: torch.Tensor | None = None,
                  max_tokens: int = 0) -> torch.Tensor:
    """``[N]`` bool: False for truncated responses (DAPO's overlong filtering).

    Args:
        lengths: ``[N]`` response lengths; a response of ``>= max_tokens`` tokens counts as truncated.
        truncated: ``[N]`` bool from the rollout engine (stopped by the length limit, not by an
            end-of-sequence token); used instead of lengths when given.
        max_tokens: L_max, > 0 when judging by lengths.

    Raises:
        ValueError: neither input, or lengths without ``max_tokens > 0``.
    """
    if truncated is not None:
        return ~torch.as_tensor(truncated, dtype=torch.bool)
    if lengths is None or not max_tokens > 0:
        raise ValueError("overlong_keep: pass truncated [N], or lengths [N] with max_tokens > 0 "
                         "(rl.max_response_tokens)")
    return torch.as_tensor(lengths) < max_tokens
