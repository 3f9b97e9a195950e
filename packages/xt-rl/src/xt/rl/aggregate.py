"""How a per-token loss becomes the step objective: the three aggregations, split-invariant.

Shape legend: T tokens of a micro-batch, D its sequences; over the whole step (all micro-batches of
all ranks): N_tok loss tokens, S sequences with at least one loss token, n_i the loss tokens of
sequence i, l_t the per-token loss.

| ``rl.aggregation`` | step objective | source |
|---|---|---|
| ``token_mean`` (default) | ``Σ_t l_t / N_tok``: every token weighs the same | DAPO (Yu et al. 2025), "token-level policy gradient loss" |
| ``seq_mean_token_mean`` | ``(1/S) Σ_i (1/n_i) Σ_{t∈i} l_t``: every sequence weighs the same | GRPO (Shao et al. 2024); GSPO's sequence objective (Zheng et al. 2025) |
| ``constant`` | ``Σ_t l_t / (S · L)`` with L = ``rl.max_response_tokens`` (the generation budget) | Dr.GRPO (Liu et al. 2025): no length normalisation |

The engine sums what a loss returns over all micro-batches of all ranks (docs/architecture.md,
Loss normalisation), so each micro-batch returns its share with the **global** N_tok and S, which
`step_totals` counts before the first forward (the engine all-reduces them into
``LossContext.totals``). A sequence lies inside one micro-batch, so ``n_i`` is local. Hence
splitting the same sequences over micro-batches or data-parallel ranks changes neither the
objective nor its gradients.

**Ulysses SP** (``parallel.sp_size > 1``, `xt.rl.seq_parallel`): a sequence is split over the SP
ranks, so ``n_i`` and "has a loss token" are whole-sequence facts. Both are counts without
gradient: `step_totals` and `aggregate` take ``seq_reduce`` (`SequenceShards.sum`), which adds the
SP ranks' per-sequence partial counts, and `step_totals` counts each sequence on SP rank 0 only.
The differentiable part stays a per-token sum (``Σ_t l_t / n_i``), which the engine already adds
over ranks, so the objective and its gradients equal ``sp_size = 1``'s.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from xt.rl.batch import loss_token_mask, segment_sum
from xt.rl.seq_parallel import SeqReduce, SequenceShards, index_of, whole

__all__ = ["AGGREGATIONS", "step_totals", "aggregate", "token_mean"]

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "constant")


def step_totals(micro_batches: Sequence[Mapping[str, Any]],
                sp: SequenceShards | None = None) -> dict[str, torch.Tensor]:
    """This rank's ``{"tokens": N_tok, "sequences": S}`` (int64 scalars) over the step's micro-batches.

    Loss tokens are `loss_token_mask`'s; a sequence counts when it has at least one. With `sp`
    (the micro-batches are SP slices) a sequence's loss tokens are summed over the SP group first
    (collective) and the sequence is counted on SP rank 0 only, so the sum over ranks is S.
    """
    device = micro_batches[0]["labels"].device if micro_batches else torch.device("cpu")
    tokens = torch.zeros((), dtype=torch.long, device=device)
    seqs = torch.zeros((), dtype=torch.long, device=device)
    for mb in micro_batches:
        mask = loss_token_mask(mb)
        seq, d = index_of(mb, sp)
        tokens += mask.sum()
        n_i = whole(segment_sum(mask.long(), seq, d), sp.sum if sp is not None else None)
        if sp is None or sp.rank == 0:
            seqs += (n_i > 0).sum()
    return {"tokens": tokens, "sequences": seqs}


def _count(totals: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in totals:
        raise KeyError(f"LossContext.totals has no {name!r}: the loss's totals() must be step_totals "
                       "(xt.rl.aggregate), summed over ranks by the engine")
    return totals[name].clamp(min=1)


def token_mean(x: torch.Tensor, mask: torch.Tensor, totals: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """This micro-batch's share of the step's token mean of ``x[T]``: ``Σ_{mask} x / N_tok`` (a metric
    summed over micro-batches and ranks becomes the global mean)."""
    return torch.where(mask, x, 0.0).sum() / _count(totals, "tokens").to(x.dtype)


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, seq: torch.Tensor, num_seqs: int,
              totals: Mapping[str, torch.Tensor], mode: str = "token_mean",
              max_response_tokens: int = 0, seq_reduce: SeqReduce | None = None) -> torch.Tensor:
    """This micro-batch's share of the step objective of ``per_token`` under `mode` (module docstring).

    Args:
        per_token: ``[T]`` float per-token loss (any value on masked tokens: they are dropped).
        mask: ``[T]`` bool loss tokens (`xt.rl.batch.loss_token_mask`).
        seq, num_seqs: the sequence of each token (`xt.rl.batch.sequence_index`).
        totals: the step's global ``tokens`` and ``sequences`` (`step_totals` summed over ranks).
        mode: "token_mean", "seq_mean_token_mean" or "constant".
        max_response_tokens: L of "constant", > 0.
        seq_reduce: under SP, sums the ranks' per-sequence partials (``n_i``; module docstring).

    Returns:
        A scalar of ``per_token``'s dtype with its graph; 0 on a micro-batch without loss tokens.

    Raises:
        ValueError: an unknown mode, or "constant" without ``max_response_tokens > 0``.
        KeyError: ``totals`` lacks a count.
    """
    x = torch.where(mask, per_token, 0.0)
    if mode == "token_mean":
        return x.sum() / _count(totals, "tokens").to(x.dtype)
    if mode == "seq_mean_token_mean":
        n_i = whole(segment_sum(mask.to(x.dtype), seq, num_seqs).detach(), seq_reduce)
        per_seq = segment_sum(x, seq, num_seqs) / n_i.clamp(min=1)
        return per_seq.sum() / _count(totals, "sequences").to(x.dtype)
    if mode == "constant":
        if not max_response_tokens > 0:
            raise ValueError("aggregation 'constant' needs rl.max_response_tokens > 0 (the generation "
                             f"budget L of Dr.GRPO), got {max_response_tokens!r}")
        return x.sum() / (_count(totals, "sequences").to(x.dtype) * max_response_tokens)
    raise ValueError(f"rl.aggregation must be one of {list(AGGREGATIONS)}, got {mode!r}")
