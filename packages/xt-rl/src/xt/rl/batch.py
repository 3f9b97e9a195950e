"""The RL micro-batch: the engine's packed batch plus per-token RL fields, and its sequences.

Shape legend: T packed tokens of one micro-batch, D sequences (documents) in it, N samples.

An RL micro-batch is the packed batch of docs/contracts.md (Batches) in which every document is one
sample, prompt then response, plus per-token tensors aligned with ``labels``: position ``t`` holds
the value for the token ``labels[t]`` (the *next* token), as `xt.models.common.head_loss.token_log_probs`
returns its log-probs. Only response tokens carry labels; prompt tokens and each document's last
token are ``-100``.

| key | shape, dtype | meaning |
|---|---|---|
| ``advantages`` | ``[T]`` float | the sample's advantage on its response tokens (0 elsewhere) |
| ``old_log_probs`` | ``[T]`` float32 | ``log π_old(labels[t])`` from the trainer before this update (optional: absent = on-policy, the current log-probs detached) |
| ``ref_log_probs`` | ``[T]`` float32 | ``log π_ref(labels[t])`` of the reference policy (needed for a KL term) |
| ``rollout_log_probs`` | ``[T]`` float32 | the rollout engine's log-probs of the sampled tokens (needed for mismatch correction) |
| ``loss_mask`` | ``[T]`` bool/float | optional extra mask (e.g. DAPO overlong filtering): 0 drops the token from the loss and from its counts |
| ``routed_experts`` | ``[L, T, K]`` int | optional: the rollout's experts of every MoE layer for every token, for routing replay; this key *is* passed to the model, whose `xt.models.common.routing_replay.enable_routing_replay` hook takes it |
| ``sp_tokens`` | int | only on a sequence-parallel slice (`xt.rl.seq_parallel`): the micro-batch's tokens T before the split (later positions are SP padding) |

`RL_KEYS` are kept out of the model call by the losses (``model_inputs``). `pack_samples` builds
such a micro-batch from token lists.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from xt.core.labels import IGNORE_INDEX

__all__ = ["RL_KEYS", "PER_TOKEN_KEYS", "SP_TOKENS", "loss_token_mask", "sequence_lengths", "sequence_index",
           "expand_to_tokens", "segment_sum", "pack_samples"]

#: the routing-replay key: passed to the model (its replay hook removes it), not a loss input
ROUTED_EXPERTS = "routed_experts"

#: on a sequence-parallel slice: the micro-batch's tokens before the split (`xt.rl.seq_parallel`)
SP_TOKENS = "sp_tokens"

#: per-token inputs of the RL losses that the model must not receive
PER_TOKEN_KEYS = ("advantages", "old_log_probs", "ref_log_probs", "rollout_log_probs")
RL_KEYS = PER_TOKEN_KEYS + ("loss_mask", SP_TOKENS)


def loss_token_mask(batch: Mapping[str, Any]) -> torch.Tensor:
    """``[T]`` bool: the tokens a policy loss counts, ``labels != -100`` and the optional ``loss_mask``.

    Raises:
        KeyError: the batch has no ``labels``.
        ValueError: ``loss_mask`` has another number of elements than ``labels``.
    """
    labels = batch["labels"].reshape(-1)
    mask = labels != IGNORE_INDEX
    extra = batch.get("loss_mask")
    if extra is not None:
        extra = torch.as_tensor(extra, device=labels.device).reshape(-1)
        if extra.numel() != labels.numel():
            raise ValueError(f"batch['loss_mask'] has {extra.numel()} elements but labels have "
                             f"{labels.numel()} (the RL batch is per token: xt.rl.batch)")
        mask = mask & (extra != 0)
    return mask


def sequence_lengths(batch: Mapping[str, Any]) -> torch.Tensor:
    """``[D]`` int64 token count of each sequence of a micro-batch.

    Packed ``[T]`` labels: the documents of ``cu_seqlens`` (one document when it is absent);
    batched ``[B, S]`` labels: each row.

    Raises:
        ValueError: ``cu_seqlens`` does not start at 0 and end at T.
    """
    labels = batch["labels"]
    if labels.ndim == 2:
        return torch.full((labels.shape[0],), labels.shape[1], dtype=torch.long, device=labels.device)
    total = labels.numel()
    cu = batch.get("cu_seqlens")
    if cu is None:
        return torch.tensor([total], dtype=torch.long, device=labels.device)
    cu = cu.to(device=labels.device, dtype=torch.long)
    if cu.numel() < 1 or int(cu[0]) != 0 or int(cu[-1]) != total:
        raise ValueError(f"batch['cu_seqlens'] must run from 0 to the {total} tokens of labels; got "
                         f"{cu.tolist()[:4]}...{cu.tolist()[-2:]} (docs/contracts.md, Batches)")
    return cu.diff()


def sequence_index(batch: Mapping[str, Any]) -> tuple[torch.Tensor, int]:
    """``(seq [T] int64, D)``: the sequence of each token (0-based, in order) and the number D."""
    lengths = sequence_lengths(batch)
    return expand_to_tokens(torch.arange(lengths.numel(), device=lengths.device), lengths), lengths.numel()


def expand_to_tokens(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Repeat ``values[D]`` ``lengths[D]`` times each: a per-sequence value on each of its tokens."""
    return torch.repeat_interleave(values, lengths.to(values.device))


def segment_sum(x: torch.Tensor, seq: torch.Tensor, num_seqs: int) -> torch.Tensor:
    """``[D]``: the sum of ``x[T]`` over each sequence (``seq`` from `sequence_index`), differentiable."""
    return x.new_zeros(num_seqs).index_add(0, seq, x)


def _per_token(name: str, values: Sequence[Sequence[float]] | None, responses: Sequence[Sequence[int]],
               prompts: Sequence[Sequence[int]], dtype: torch.dtype) -> torch.Tensor | None:
    if values is None:
        return None
    if len(values) != len(responses):
        raise ValueError(f"pack_samples: {name} has {len(values)} samples but there are {len(responses)} responses")
    parts = []
    for i, (p, r, v) in enumerate(zip(prompts, responses, values)):
        v = torch.as_tensor(v, dtype=dtype).reshape(-1)
        if v.numel() != len(r):
            raise ValueError(f"pack_samples: {name}[{i}] has {v.numel()} values for a response of {len(r)} tokens")
        parts.append(torch.cat([torch.zeros(len(p) - 1, dtype=dtype), v, torch.zeros(1, dtype=dtype)]))
    return torch.cat(parts)


def pack_samples(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], *,
                 advantages: Sequence[float] | torch.Tensor | None = None,
                 old_log_probs: Sequence[Sequence[float]] | None = None,
                 ref_log_probs: Sequence[Sequence[float]] | None = None,
                 rollout_log_probs: Sequence[Sequence[float]] | None = None,
                 keep: Sequence[bool] | torch.Tensor | None = None,
                 routed_experts: Sequence[torch.Tensor] | None = None) -> dict[str, Any]:
    """Pack N (prompt, response) samples into one RL micro-batch (module docstring).

    Sample i becomes document i: ``input_ids = prompt + response``; ``labels[t]`` is the next token
    on the positions that predict a response token (``len(prompt) - 1`` to ``len - 2``) and -100
    elsewhere. A per-token value for response token j lands at position ``len(prompt) - 1 + j``.

    Args:
        prompts, responses: N token-id lists each; every prompt has >= 1 token.
        advantages: ``[N]`` one advantage per sample, copied onto its response tokens (float32).
        old_log_probs, ref_log_probs, rollout_log_probs: per sample, one log-prob per response
            token (float32).
        keep: ``[N]`` bool; False sets ``loss_mask`` 0 on the whole sample (e.g.
            `xt.rl.dapo.overlong_keep`). Without it no ``loss_mask`` is written.
        routed_experts: per sample ``[L, len(prompt) + len(response), K]`` expert ids (the rollout's),
            concatenated into ``routed_experts [L, T, K]`` int64 for routing replay.

    Returns:
        ``{"input_ids", "labels", "position_ids", "cu_seqlens", "max_seqlen", ...}`` with the given
        RL keys, on the CPU.

    Raises:
        ValueError: N differs between arguments, a prompt is empty, or a per-token list has the
            wrong length.
    """
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"pack_samples: {len(prompts)} prompts for {len(responses)} responses (need N >= 1 of each)")
    if any(len(p) < 1 for p in prompts):
        raise ValueError("pack_samples: every prompt needs at least one token (position len(prompt) - 1 "
                         "predicts the first response token)")
    ids, labels, pos, lens = [], [], [], []
    for p, r in zip(prompts, responses):
        doc = torch.as_tensor(list(p) + list(r), dtype=torch.long)
        lab = torch.full_like(doc, IGNORE_INDEX)
        lab[len(p) - 1:len(doc) - 1] = doc[len(p):]
        ids.append(doc), labels.append(lab), pos.append(torch.arange(len(doc))), lens.append(len(doc))
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lens).cumsum(0)
    batch: dict[str, Any] = {"input_ids": torch.cat(ids), "labels": torch.cat(labels),
                             "position_ids": torch.cat(pos), "cu_seqlens": cu, "max_seqlen": max(lens)}
    if advantages is not None:
        adv = torch.as_tensor(advantages, dtype=torch.float32).reshape(-1)
        if adv.numel() != len(responses):
            raise ValueError(f"pack_samples: advantages has {adv.numel()} values for {len(responses)} samples")
        batch["advantages"] = _per_token("advantages", [[a] * len(r) for a, r in zip(adv.tolist(), responses)],
                                         responses, prompts, torch.float32)
    for name, vals in (("old_log_probs", old_log_probs), ("ref_log_probs", ref_log_probs),
                       ("rollout_log_probs", rollout_log_probs)):
        t = _per_token(name, vals, responses, prompts, torch.float32)
        if t is not None:
            batch[name] = t
    if keep is not None:
        keep_t = torch.as_tensor(keep, dtype=torch.bool).reshape(-1)
        if keep_t.numel() != len(responses):
            raise ValueError(f"pack_samples: keep has {keep_t.numel()} values for {len(responses)} samples")
        batch["loss_mask"] = expand_to_tokens(keep_t, torch.tensor(lens))
    if routed_experts is not None:
        if len(routed_experts) != len(responses):
            raise ValueError(f"pack_samples: routed_experts has {len(routed_experts)} samples for {len(responses)}")
        for i, (r, n) in enumerate(zip(routed_experts, lens)):
            if r.ndim != 3 or r.shape[1] != n:
                raise ValueError(f"pack_samples: routed_experts[{i}] has shape {tuple(r.shape)}; need "
                                 f"[layers, {n} (prompt + response tokens), top_k]")
        batch[ROUTED_EXPERTS] = torch.cat([torch.as_tensor(r, dtype=torch.int64) for r in routed_experts], dim=1)
    return batch
