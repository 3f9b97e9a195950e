"""Train/rollout mismatch: truncated importance sampling and masking of extreme ratios.

Shape legend: T tokens of a micro-batch, D its sequences.

The rollout engine (vLLM, SGLang, LMDeploy...) samples with its own kernels and precision, so its
probabilities ``π_rollout`` differ from the trainer's ``π_old`` for the same weights: the update is
off-policy even with one optimizer step per batch (Yao et al. 2025, "Your Efficient RL Framework
Secretly Brings You Off-Policy RL Training"). The correction weighs each token's policy-gradient
term by the importance ratio ``ρ_t = π_old(y_t) / π_rollout(y_t)``, computed from the batch's
``old_log_probs`` and ``rollout_log_probs`` (no gradient flows through it):

- **truncated IS** (TIS, Yao et al.): weight ``min(ρ, C)`` with the cap C (``rl.mismatch.tis_cap``),
  per token (``tis = "token"``: ``ρ_t``) or per sequence (``tis = "sequence"``: ``ρ_i = Π_t ρ_t``
  over the sequence's loss tokens, one weight for all of them). Truncation bounds the variance at
  the price of a small bias.
- **masking** (``mask = "token"`` / ``"sequence"``): tokens whose ratio falls outside
  ``[mask_low, mask_high]`` get weight 0 (instead of being truncated). A sequence is judged by
  its length-normalised ratio ``exp(mean_t log ρ_t)`` (the geometric mean), so a long response is
  not masked for the product of many small deviations. Masked tokens still count in the loss's
  normaliser (the estimator's sample size is unchanged).

Both may be combined: the weight is ``min(ρ, C) · keep``.

Under Ulysses SP (`xt.rl.seq_parallel`) the sequence-level sums of ``log ρ_t`` and of the loss
tokens are taken over the whole sequence through ``seq_reduce`` (no gradient flows through them).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from xt.rl.batch import segment_sum
from xt.rl.seq_parallel import SeqReduce, whole

__all__ = ["MISMATCH_LEVELS", "MismatchWeights", "log_importance_ratio", "truncated_is_weights",
           "ratio_keep_mask", "mismatch_weights"]

MISMATCH_LEVELS = ("off", "token", "sequence")


class MismatchWeights(NamedTuple):
    """Result of `mismatch_weights`.

    Attributes:
        weights: ``[T]`` float32, detached, 0 off the loss mask.
        capped: ``[T]`` bool, tokens whose TIS weight was truncated to the cap.
        masked: ``[T]`` bool, loss tokens dropped by the ratio mask.
        log_ratio: ``[T]`` float32 ``log ρ_t`` (0 off the loss mask).
    """
    weights: torch.Tensor
    capped: torch.Tensor
    masked: torch.Tensor
    log_ratio: torch.Tensor


def log_importance_ratio(old_log_probs: torch.Tensor, rollout_log_probs: torch.Tensor,
                         mask: torch.Tensor) -> torch.Tensor:
    """``[T]`` float32 ``log π_old − log π_rollout`` on ``mask`` tokens, 0 elsewhere (detached).

    Raises:
        ValueError: shapes that differ.
    """
    if old_log_probs.shape != rollout_log_probs.shape or old_log_probs.shape != mask.shape:
        raise ValueError(f"mismatch: old_log_probs {tuple(old_log_probs.shape)}, rollout_log_probs "
                         f"{tuple(rollout_log_probs.shape)} and the loss mask {tuple(mask.shape)} must match")
    x = old_log_probs.detach().float() - rollout_log_probs.detach().float()
    return torch.where(mask, x, 0.0)


def _level_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor, seq: torch.Tensor, num_seqs: int,
                     level: str, normalise: bool, seq_reduce: SeqReduce | None) -> torch.Tensor:
    if level == "token":
        return log_ratio
    if level == "sequence":
        total = whole(segment_sum(log_ratio, seq, num_seqs), seq_reduce)
        if normalise:
            total = total / whole(segment_sum(mask.float(), seq, num_seqs), seq_reduce).clamp(min=1)
        return total[seq]
    raise ValueError(f"mismatch level must be one of {list(MISMATCH_LEVELS)}, got {level!r}")


def truncated_is_weights(log_ratio: torch.Tensor, mask: torch.Tensor, seq: torch.Tensor, num_seqs: int,
                         level: str, cap: float, seq_reduce: SeqReduce | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights [T], capped [T] bool)``: ``min(ρ, cap)`` per token or per sequence (module docstring).

    Args:
        log_ratio: ``[T]`` `log_importance_ratio`.
        mask: ``[T]`` bool loss tokens; seq, num_seqs: `xt.rl.batch.sequence_index`.
        level: "token" or "sequence" (``rl.mismatch.tis``).
        cap: C > 0 (``rl.mismatch.tis_cap``).
        seq_reduce: under SP, sums the ranks' per-sequence partials (module docstring).

    Raises:
        ValueError: a bad level or cap.
    """
    if not (cap > 0 and math.isfinite(cap)):
        raise ValueError(f"truncated IS: cap must be a finite number > 0, got {cap!r} (rl.mismatch.tis_cap)")
    lr = _level_log_ratio(log_ratio, mask, seq, num_seqs, level, normalise=False, seq_reduce=seq_reduce)
    log_cap = math.log(cap)
    capped = (lr > log_cap) & mask
    return torch.where(mask, lr.clamp(max=log_cap).exp(), 0.0), capped


def ratio_keep_mask(log_ratio: torch.Tensor, mask: torch.Tensor, seq: torch.Tensor, num_seqs: int,
                    level: str, low: float, high: float, seq_reduce: SeqReduce | None = None) -> torch.Tensor:
    """``[T]`` bool: loss tokens whose ratio (token, or sequence geometric mean) is in ``[low, high]``;
    ``seq_reduce`` as for `truncated_is_weights`.

    Raises:
        ValueError: a bad level, or bounds outside ``0 <= low <= 1 <= high``.
    """
    if not (0 <= low <= 1 <= high):
        raise ValueError(f"ratio mask: need 0 <= mask_low <= 1 <= mask_high, got {low!r}, {high!r} "
                         "(rl.mismatch.mask_low / mask_high)")
    lr = _level_log_ratio(log_ratio, mask, seq, num_seqs, level, normalise=True, seq_reduce=seq_reduce)
    lo = math.log(low) if low > 0 else -math.inf
    hi = math.log(high) if math.isfinite(high) else math.inf
    return mask & (lr >= lo) & (lr <= hi)


def mismatch_weights(old_log_probs: torch.Tensor, rollout_log_probs: torch.Tensor, mask: torch.Tensor,
                     seq: torch.Tensor, num_seqs: int, *, tis: str = "token", tis_cap: float = 2.0,
                     mask_level: str = "off", mask_low: float = 0.0, mask_high: float = math.inf,
                     seq_reduce: SeqReduce | None = None) -> MismatchWeights:
    """The per-token mismatch weights ``min(ρ, C) · keep`` (module docstring).

    Args:
        old_log_probs, rollout_log_probs: ``[T]`` float log-probs of the sampled tokens.
        mask: ``[T]`` bool loss tokens; seq, num_seqs: `xt.rl.batch.sequence_index`.
        tis: "off", "token" or "sequence" (``rl.mismatch.tis``); tis_cap: C.
        mask_level: "off", "token" or "sequence" (``rl.mismatch.mask``); mask_low, mask_high: bounds.
        seq_reduce: under SP, sums the ranks' per-sequence partials (module docstring).

    Returns:
        `MismatchWeights`.

    Raises:
        ValueError: shapes, levels or bounds as in the functions above.
    """
    log_ratio = log_importance_ratio(old_log_probs, rollout_log_probs, mask)
    if tis == "off":
        weights, capped = mask.float(), torch.zeros_like(mask)
    else:
        weights, capped = truncated_is_weights(log_ratio, mask, seq, num_seqs, tis, tis_cap, seq_reduce)
    masked = torch.zeros_like(mask)
    if mask_level != "off":
        keep = ratio_keep_mask(log_ratio, mask, seq, num_seqs, mask_level, mask_low, mask_high, seq_reduce)
        masked = mask & ~keep
        weights = torch.where(keep, weights, 0.0)
    return MismatchWeights(weights, capped, masked, log_ratio)
