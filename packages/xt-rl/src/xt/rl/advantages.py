"""Group-relative advantages of outcome rewards: GRPO, Dr.GRPO, RLOO.

Shape legend: N samples, G samples per group (the responses to one prompt).

Each prompt is answered G times; a sample's advantage is its reward against a baseline taken from
its own group, so no value network is needed:

| estimator | advantage of sample i in a group | source |
|---|---|---|
| ``grpo`` | ``(r_i − mean(r)) / (std(r) + eps)``; ``scale_by_std=False`` keeps ``r_i − mean(r)`` | Shao et al. 2024, "DeepSeekMath" (GRPO) |
| ``dr_grpo`` | ``r_i − mean(r)``, no std division (the loss then uses a constant normaliser, `xt.rl.aggregate`) | Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective" |
| ``rloo`` | ``r_i − mean_{j≠i} r_j = G/(G−1) · (r_i − mean(r))`` (leave-one-out baseline) | Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE-Style Optimization" |

``std`` is the sample standard deviation (Bessel's correction, ``G − 1``) unless ``unbiased=False``.

**NaN policy.** Every estimator returns finite values for any input (NaN/±inf rewards, groups of
one, all-equal and near-equal groups, rewards up to the float64 range):

- A reward that is NaN or ±inf (e.g. a failed reward evaluation) is *excluded*: its sample gets
  advantage 0 and it does not enter its group's mean or std (``nonfinite="exclude"``, default).
  ``nonfinite="raise"`` raises instead, naming the first such sample.
- A group whose finite rewards are all equal (this includes a group of one, or of one finite
  reward) carries no signal: all its advantages are exactly 0.
- Near-equal groups: GRPO's ratio is computed in scaled form (``u = dev / max|dev|``), so
  ``|A| < sqrt(G)`` whatever ``eps``; a std under ``eps`` cannot blow it up. The mean is
  taken of ``r / max|r|``, so huge rewards do not overflow into NaN.
- Dr.GRPO and RLOO are in reward units: finite whenever ``|r_i − baseline|`` fits the output dtype.

The computation is float64; the result has the rewards' dtype (float32 at least).
"""
from __future__ import annotations

from typing import Literal

import torch

__all__ = ["ADVANTAGE_ESTIMATORS", "group_advantages", "grpo_advantages", "dr_grpo_advantages",
           "rloo_advantages", "group_index", "group_spread"]

ADVANTAGE_ESTIMATORS = ("grpo", "dr_grpo", "rloo")
NonFinite = Literal["exclude", "raise"]


def group_index(rewards: torch.Tensor, group_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(r [N] float64, g [N] int64 in [0, num_groups), num_groups)`` of rewards and their groups.

    Args:
        rewards: ``[N]`` with ``group_ids [N]`` (any integers; equal ids form a group, of any size),
            or ``[B, G]`` with ``group_ids=None`` (each row a group).

    Raises:
        ValueError: other shapes, or ``group_ids`` of another length.
    """
    if rewards.ndim == 2 and group_ids is None:
        b, g = rewards.shape
        return (rewards.reshape(-1).double(),
                torch.arange(b, device=rewards.device).repeat_interleave(g), b)
    if rewards.ndim != 1 or group_ids is None:
        raise ValueError("advantages: pass rewards [N] with group_ids [N], or rewards [B, G] (one group "
                         f"per row) without group_ids; got rewards of shape {tuple(rewards.shape)} and "
                         f"group_ids {'None' if group_ids is None else tuple(group_ids.shape)}")
    if group_ids.shape != rewards.shape:
        raise ValueError(f"advantages: group_ids has shape {tuple(group_ids.shape)}, rewards {tuple(rewards.shape)}")
    uniq, inv = torch.unique(group_ids.to(rewards.device), return_inverse=True)
    return rewards.double(), inv.long(), uniq.numel()


def _segment(x: torch.Tensor, g: torch.Tensor, n: int, reduce: str) -> torch.Tensor:
    init = {"sum": 0.0, "amax": -torch.inf, "amin": torch.inf}[reduce]
    out = torch.full((n,), init, dtype=x.dtype, device=x.device)
    return out.scatter_reduce(0, g, x, reduce=reduce, include_self=True)


def group_spread(r: torch.Tensor, g: torch.Tensor, num_groups: int) -> torch.Tensor:
    """``[num_groups]`` bool: the group's finite rewards are not all equal (two distinct values at
    least), i.e. its advantages are not all 0. ``(r, g, num_groups)`` as from `group_index`."""
    finite = torch.isfinite(r)
    gmax = _segment(torch.where(finite, r, -torch.inf), g, num_groups, "amax")
    gmin = _segment(torch.where(finite, r, torch.inf), g, num_groups, "amin")
    return gmax > gmin


def _centred(rewards: torch.Tensor, group_ids: torch.Tensor | None, nonfinite: NonFinite):
    """Per sample: (scaled deviation ``(r − mean) / s``, group scale ``s``, finite count, zero mask,
    group index, group count), float64; the output dtype."""
    if nonfinite not in ("exclude", "raise"):
        raise ValueError(f"advantages: nonfinite must be 'exclude' or 'raise', got {nonfinite!r}")
    out_dtype = torch.promote_types(rewards.dtype, torch.float32) if rewards.is_floating_point() else torch.float32
    r, g, n = group_index(rewards, group_ids)
    finite = torch.isfinite(r)
    if nonfinite == "raise" and not bool(finite.all()):
        i = int((~finite).nonzero()[0])
        raise ValueError(f"advantages: reward of sample {i} is {float(r[i])} (rl.nonfinite_reward = 'raise'); "
                         "use 'exclude' to give such samples advantage 0")
    rf = torch.where(finite, r, 0.0)
    count = _segment(finite.double(), g, n, "sum")
    scale = _segment(rf.abs(), g, n, "amax")  # max |r| of the group's finite rewards
    s = torch.where(scale > 0, scale, 1.0)[g]
    u = rf / s  # in [-1, 1]
    mean_u = _segment(u, g, n, "sum")[g] / count.clamp(min=1)[g]
    zero = ~finite | ~group_spread(r, g, n)[g]  # excluded, or a group with no spread (incl. 1 sample)
    dev_u = torch.where(zero, 0.0, u - mean_u)  # in [-2, 2]
    return dev_u, s, count[g], zero, g, n, out_dtype


def grpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor | None = None, *,
                    scale_by_std: bool = True, eps: float = 1e-6, unbiased: bool = True,
                    nonfinite: NonFinite = "exclude") -> torch.Tensor:
    """GRPO advantages ``(r_i − mean(r)) / (std(r) + eps)`` per group (Shao et al. 2024).

    Args:
        rewards: ``[N]`` (with ``group_ids``) or ``[B, G]`` float rewards (see `group_index`).
        group_ids: ``[N]`` integer group of each sample, or None for ``[B, G]`` rewards.
        scale_by_std: divide by the group std (False: mean-centred only, e.g. Dr.GRPO's advantage
            with another aggregation).
        eps: added to the std (reward units), >= 0.
        unbiased: sample std (divide by ``G − 1``), else population std (``G``).
        nonfinite: "exclude" or "raise" for NaN/inf rewards (module docstring, NaN policy).

    Returns:
        Advantages of the rewards' shape and dtype (float32 at least), finite.

    Raises:
        ValueError: bad shapes, ``eps < 0``, or a non-finite reward under ``nonfinite="raise"``.
    """
    if not eps >= 0:
        raise ValueError(f"grpo_advantages: eps must be >= 0, got {eps!r} (rl.std_eps)")
    dev_u, s, count, zero, g, n, dtype = _centred(rewards, group_ids, nonfinite)
    if not scale_by_std:
        return (dev_u * s).to(dtype).reshape(rewards.shape)
    m = _segment(dev_u.abs(), g, n, "amax")[g]
    m = torch.where(m > 0, m, 1.0)
    v = dev_u / m  # max |v| = 1 in every group with spread
    ddof = 1.0 if unbiased else 0.0
    std_v = (_segment(v * v, g, n, "sum")[g] / (count - ddof).clamp(min=1)).sqrt()
    # = dev / (std + eps) with dev = v·m·s; eps / (m·s) -> inf (adv -> 0) when m·s underflows
    adv = v / (std_v + eps / (s * m)) if eps > 0 else v / std_v
    return torch.where(zero, 0.0, adv).to(dtype).reshape(rewards.shape)


def dr_grpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor | None = None, *,
                       nonfinite: NonFinite = "exclude") -> torch.Tensor:
    """Dr.GRPO advantages ``r_i − mean(r)``: GRPO without the std division (Liu et al. 2025).

    The paper's other change, a constant loss normaliser instead of each response's length, is
    the loss's aggregation ``"constant"`` (`xt.rl.aggregate`). Args, returns and raises as
    `grpo_advantages` (reward units).
    """
    dev_u, s, _, _, _, _, dtype = _centred(rewards, group_ids, nonfinite)
    return (dev_u * s).to(dtype).reshape(rewards.shape)


def rloo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor | None = None, *,
                    nonfinite: NonFinite = "exclude") -> torch.Tensor:
    """RLOO advantages ``r_i − mean_{j≠i}(r_j)``, the leave-one-out baseline (Kool et al. 2019;
    Ahmadian et al. 2024), equal to ``G/(G−1) · (r_i − mean(r))`` over the group's G finite
    rewards; 0 for a group of one. Args, returns and raises as `grpo_advantages` (reward units).
    """
    dev_u, s, count, _, _, _, dtype = _centred(rewards, group_ids, nonfinite)
    factor = count / (count - 1).clamp(min=1)
    return (dev_u * s * factor).to(dtype).reshape(rewards.shape)


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor | None = None, *,
                     estimator: str = "grpo", scale_by_std: bool = True, eps: float = 1e-6,
                     nonfinite: NonFinite = "exclude") -> torch.Tensor:
    """The advantages of `estimator` (``rl.advantage``: "grpo", "dr_grpo" or "rloo").

    ``scale_by_std`` and ``eps`` apply to "grpo" only. Returns and raises as `grpo_advantages`,
    plus ValueError for an unknown estimator.
    """
    if estimator == "grpo":
        return grpo_advantages(rewards, group_ids, scale_by_std=scale_by_std, eps=eps, nonfinite=nonfinite)
    if estimator == "dr_grpo":
        return dr_grpo_advantages(rewards, group_ids, nonfinite=nonfinite)
    if estimator == "rloo":
        return rloo_advantages(rewards, group_ids, nonfinite=nonfinite)
    raise ValueError(f"rl.advantage must be one of {list(ADVANTAGE_ESTIMATORS)}, got {estimator!r}")
