"""KL to a reference policy from sampled tokens: the k1/k2/k3 estimators, in the loss or in the reward.

Shape legend: T tokens, D sequences.

The tokens were sampled from the policy π, so ``KL(π ‖ π_ref) = E_π[log π − log π_ref]`` is
estimated per token from ``x = log π_ref(y_t) − log π(y_t)`` (J. Schulman, "Approximating KL
divergence", 2020):

| estimator | per token | unbiased | always >= 0 |
|---|---|---|---|
| ``k1`` | ``−x`` | yes | no |
| ``k2`` | ``x² / 2`` | no (low variance near π = π_ref) | yes |
| ``k3`` | ``exp(x) − 1 − x`` | yes | yes |

Either the estimate joins the loss per token, ``+ kl_coef · k(x_t)`` aggregated like the policy
term (``rl.kl_in = "loss"``, as GRPO does with k3), differentiable through ``log π``; or it is
subtracted from each sample's reward before the advantages, ``r_i − kl_coef · Σ_t k(x_t)`` over
its response tokens (``rl.kl_in = "reward"``, as in RLHF's KL-shaped reward), with no gradient.
"""
from __future__ import annotations

import torch

from xt.rl.batch import segment_sum
from xt.rl.seq_parallel import SeqReduce, whole

__all__ = ["KL_ESTIMATORS", "kl_estimate", "sequence_kl", "kl_penalized_rewards"]

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of ``KL(π ‖ π_ref)`` (module docstring), nats.

    Args:
        log_probs: ``[T]`` float ``log π(y_t)`` of the sampled tokens (differentiable or not).
        ref_log_probs: ``[T]`` ``log π_ref(y_t)`` (no gradient is taken through it).
        estimator: "k1", "k2" or "k3".

    Returns:
        ``[T]`` in ``log_probs``' dtype (float32 at least). k3 overflows to inf only when π_ref
        gives a token about e^88 (float32) times the policy's probability.

    Raises:
        ValueError: an unknown estimator, or shapes that differ.
    """
    if log_probs.shape != ref_log_probs.shape:
        raise ValueError(f"kl_estimate: log_probs {tuple(log_probs.shape)} and ref_log_probs "
                         f"{tuple(ref_log_probs.shape)} differ in shape")
    dtype = torch.promote_types(log_probs.dtype, torch.float32)
    x = ref_log_probs.detach().to(dtype) - log_probs.to(dtype)
    if estimator == "k1":
        return -x
    if estimator == "k2":
        return 0.5 * x * x
    if estimator == "k3":
        return torch.expm1(x) - x
    raise ValueError(f"rl.kl_estimator must be one of {list(KL_ESTIMATORS)}, got {estimator!r}")


def sequence_kl(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, mask: torch.Tensor,
                seq: torch.Tensor, num_seqs: int, estimator: str = "k1",
                seq_reduce: SeqReduce | None = None) -> torch.Tensor:
    """``[D]``: each sequence's summed per-token KL estimate over its ``mask`` tokens, nats (detached).

    Args:
        log_probs, ref_log_probs: ``[T]`` as for `kl_estimate`.
        mask: ``[T]`` bool, the response tokens (`xt.rl.batch.loss_token_mask`).
        seq, num_seqs: the sequence of each token (`xt.rl.batch.sequence_index`).
        estimator: as for `kl_estimate`.
        seq_reduce: under Ulysses SP, sums the SP ranks' partial sums (`xt.rl.seq_parallel`).
    """
    k = kl_estimate(log_probs.detach(), ref_log_probs, estimator)
    return whole(segment_sum(torch.where(mask, k, 0.0), seq, num_seqs), seq_reduce)


def kl_penalized_rewards(rewards: torch.Tensor, seq_kl: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """``rewards[N] − kl_coef · seq_kl[N]``: the KL-in-reward shaping (``rl.kl_in = "reward"``).

    Args:
        rewards: ``[N]`` outcome rewards.
        seq_kl: ``[N]`` summed KL estimate of each sample's response (`sequence_kl`), same order.
        kl_coef: >= 0 (``rl.kl_coef``).

    Raises:
        ValueError: a negative coefficient or mismatched lengths.
    """
    if not kl_coef >= 0:
        raise ValueError(f"kl_penalized_rewards: kl_coef must be >= 0, got {kl_coef!r} (rl.kl_coef)")
    if rewards.shape != seq_kl.shape:
        raise ValueError(f"kl_penalized_rewards: rewards {tuple(rewards.shape)} and seq_kl "
                         f"{tuple(seq_kl.shape)} differ in shape")
    return rewards - kl_coef * seq_kl.to(rewards.dtype)
