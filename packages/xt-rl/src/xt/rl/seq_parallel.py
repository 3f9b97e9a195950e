"""Ulysses sequence parallelism (SP) inside the RL trainer: a micro-batch split over the SP group,
and the whole-sequence sums the RL losses need.

Shape legend: P = ``parallel.sp_size``, T tokens of a micro-batch before the split, T_pad = T
rounded up to a multiple of P, Tl = T_pad / P tokens on each SP rank, D sequences (documents) of
the micro-batch, D_pad = D + 1 when padding was added (one padding document at the end), else D.

With ``parallel.sp_size = P > 1`` every micro-batch is cut as `xt train` cuts it
(`xt.parallel.sp_batch.shard_batch_for_sp` through the layout's ``DistContext.shard_batch``):
rank p of the SP group keeps tokens ``[p·Tl, (p+1)·Tl)`` of the padded batch and the *global*
``cu_seqlens``; the per-token RL keys (advantages, log-probs, ``loss_mask``) are sliced with the
tokens and ``routed_experts [L, T, K]`` along its token axis. Attention sees whole documents
through Ulysses' all-to-alls, so every per-token quantity (``log π``, ratio, clip, KL estimate,
token-level TIS, entropy) is the one of the unsplit batch, on this rank's tokens.

What needs a whole sequence is a **sum over its tokens**, and every such sum the RL losses take
is of a value without gradient: ``n_i`` (loss tokens per sequence), GSPO's ``Σ_t (log π − log π_old)``
(its ``sg[log s_i]``), the sequence-level TIS / mask log-ratio, the per-sample KL of
``rl.kl_in = "reward"``. `SequenceShards.sum` adds the SP ranks' partial ``[D_pad]`` sums with one
plain all-reduce over the SP group (no autograd collective is needed). Everything differentiable
stays per token and local: ``seq_mean_token_mean`` is ``Σ_t l_t / (n_i · S)`` with the global
``n_i``, a sum over tokens that the engine already adds over ranks (docs/architecture.md, Loss
normalisation), so the objective, its gradients and the metrics are those of ``sp_size = 1``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist

from xt.rl.batch import ROUTED_EXPERTS, SP_TOKENS, expand_to_tokens, sequence_index

__all__ = ["SeqReduce", "whole", "SequenceShards", "sequence_shards", "index_of"]

#: adds the SP ranks' partial per-sequence sums ``[D]`` (`SequenceShards.sum`); None = whole sequences
SeqReduce = Callable[[torch.Tensor], torch.Tensor]


def whole(partial: torch.Tensor, seq_reduce: SeqReduce | None) -> torch.Tensor:
    """``partial`` (per-sequence sums of this rank's tokens, no gradient) summed over the SP group,
    or as it is when ``seq_reduce`` is None (the sequences are whole on this rank)."""
    return partial if seq_reduce is None else seq_reduce(partial)


class SequenceShards:
    """This rank's place in its SP group, the micro-batch split and the whole-sequence sums
    (module docstring).

    Args:
        dist: the layout's `DistContext` with ``sp_rank``, ``sp_size > 1``, ``shard_batch`` and
            ``meshes.sp_group`` (`xt.parallel.context.ParallelDistContext`).

    Raises:
        ValueError: ``dist`` has no SP group or ``sp_size < 2``.
    """

    def __init__(self, dist_ctx: Any) -> None:
        size = int(getattr(dist_ctx, "sp_size", 1))
        meshes = getattr(dist_ctx, "meshes", None)
        if size < 2 or meshes is None or not callable(getattr(dist_ctx, "shard_batch", None)):
            raise ValueError("SequenceShards needs a layout DistContext with parallel.sp_size > 1 "
                             f"(xt.parallel.apply_layout), got {type(dist_ctx).__name__} with sp_size {size}")
        self.dist = dist_ctx
        self.rank, self.size = int(dist_ctx.sp_rank), size
        self.group = meshes.sp_group

    def shard(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """This rank's slice of an RL micro-batch (`xt.rl.batch`): every ``[T]`` tensor cut to
        ``[Tl]``, ``routed_experts [L, T, K]`` to ``[L, Tl, K]`` (experts ``0..K-1`` on SP padding
        tokens), the global ``cu_seqlens`` kept, and ``batch[SP_TOKENS] = T`` (an int, never passed
        to the model) so that the padding tokens are known.

        Raises:
            ValueError: what `shard_batch_for_sp` raises (a batch that is not packed 1-D).
        """
        b = dict(batch)
        experts = b.pop(ROUTED_EXPERTS, None)
        n = int(b["input_ids"].numel())
        if experts is not None:  # token axis first, so the split cuts it like the other [T] tensors
            b[ROUTED_EXPERTS] = experts.transpose(0, 1)
        out = self.dist.shard_batch(b)
        out[SP_TOKENS] = n
        if experts is not None:
            e = out[ROUTED_EXPERTS].transpose(0, 1).contiguous()
            # SP padding tokens: experts 0..K-1, distinct as a router's top-k is (the split pads with 0s)
            e[:, ~self.real_tokens(out)] = torch.arange(e.shape[-1], dtype=e.dtype, device=e.device)
            out[ROUTED_EXPERTS] = e
        return out

    def sequence_index(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, int]:
        """``(seq [Tl] int64, D_pad)``: the global document of each of this rank's tokens.

        Raises:
            ValueError: ``cu_seqlens`` does not end at ``sp_size`` times the slice's tokens.
        """
        labels = batch["labels"].reshape(-1)
        tl = labels.numel()
        cu = batch["cu_seqlens"].to(device=labels.device, dtype=torch.long)
        if int(cu[0]) != 0 or int(cu[-1]) != tl * self.size:
            raise ValueError(f"SP slice: cu_seqlens must run from 0 to sp_size x {tl} tokens = {tl * self.size}; "
                             f"got {cu.tolist()[:4]}...{cu.tolist()[-2:]} (parallel.sp_size = {self.size})")
        lengths = cu.diff()
        seq = expand_to_tokens(torch.arange(lengths.numel(), device=labels.device), lengths)
        return seq[self.rank * tl:(self.rank + 1) * tl], lengths.numel()

    def real_tokens(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """``[Tl]`` bool: this rank's tokens that are not SP padding (``batch[SP_TOKENS]``)."""
        tl = batch["labels"].numel()
        pos = torch.arange(self.rank * tl, (self.rank + 1) * tl, device=batch["labels"].device)
        return pos < int(batch[SP_TOKENS])

    def sum(self, partial: torch.Tensor) -> torch.Tensor:
        """The SP group's sum of each rank's ``partial`` (any shape; e.g. ``[D_pad]`` per-sequence
        partial sums), detached: a new tensor, ``partial`` is left as it is. Collective over the
        SP group (every SP rank calls it in the same order)."""
        out = partial.detach().clone()
        dist.all_reduce(out, group=self.group)
        return out


def sequence_shards(dist_ctx: Any) -> SequenceShards | None:
    """`SequenceShards` of a layout with ``sp_size > 1``, else None (sequences are whole)."""
    return SequenceShards(dist_ctx) if int(getattr(dist_ctx, "sp_size", 1) or 1) > 1 else None


def index_of(batch: Mapping[str, Any], sp: SequenceShards | None) -> tuple[torch.Tensor, int]:
    """``(seq [T], D)`` of a micro-batch (`xt.rl.batch.sequence_index`), or of an SP slice
    (`SequenceShards.sequence_index`) when `sp` is given."""
    return sp.sequence_index(batch) if sp is not None else sequence_index(batch)
