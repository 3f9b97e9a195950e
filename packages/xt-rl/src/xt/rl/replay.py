"""How much the trainer's own routing disagrees with the rollout's (the routing-replay metric).

Shape legend: L MoE layers, T tokens of a micro-batch, K top-k.

With routing replay on (`xt.models.common.routing_replay`), the trainer uses the rollout's experts;
this measures what it would have chosen itself, so a run shows how often replay matters (or, with
replay off, how often the trainer scores tokens on other experts than the rollout used).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from xt.models.common.routing_replay import record_routing
from xt.rl.batch import RL_KEYS, ROUTED_EXPERTS

__all__ = ["routing_agreement"]


@torch.no_grad()
def routing_agreement(model: nn.Module, batch: Mapping[str, Any], *, valid: torch.Tensor | None = None,
                      reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """Compare the model's own top-k with the batch's recorded ``routed_experts [L, T, K]``.

    Runs one forward without ``routed_experts`` (with `enable_routing_replay` installed that clears
    the routers, so they route themselves) and records its choices.

    Args:
        model: the policy (eval/train mode left as is).
        batch: an RL micro-batch (`xt.rl.batch`) with ``routed_experts``.
        valid: ``[T]`` bool, the tokens that count (an SP slice: not the SP padding); None = all.
        reduce: sums the counts over ranks first (an SP slice: `SequenceShards.sum`, collective),
            so the fractions are the whole micro-batch's; None = this batch alone.

    Returns:
        ``routing_mismatch_frac``: share of the ``L·T·K`` expert slots whose expert set differs
        (per token and layer, the experts the model picks that the rollout did not), and
        ``routing_mismatch_tokens_frac``: share of ``(layer, token)`` pairs with any difference.

    Raises:
        KeyError: the batch has no ``routed_experts``.
    """
    recorded = batch[ROUTED_EXPERTS]
    inputs = {k: v for k, v in batch.items() if k not in RL_KEYS and k not in (ROUTED_EXPERTS, "labels")}
    dev = next(model.parameters()).device
    inputs = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    with record_routing(model) as rec:
        # no routed_experts: a replay pre-hook clears the routers, they route themselves; the
        # hidden states are enough (no [T, V] logits)
        model(**inputs, return_hidden=True)
    own = rec.call(0)
    rec_ids = recorded.to(own.device, torch.int64)
    if own.shape != rec_ids.shape:
        raise ValueError(f"routing_agreement: the model routed {tuple(own.shape)} but the batch records "
                         f"{tuple(rec_ids.shape)} (routed_experts must be [layers, T, top_k])")
    same = (own[..., :, None] == rec_ids[..., None, :]).any(-1)  # [L, T, K]: own expert also recorded
    keep = (torch.ones(same.shape[1], dtype=torch.bool, device=same.device) if valid is None
            else valid.to(same.device).reshape(-1))
    miss = ~same[:, keep]  # [L, T', K]
    l, t, k = miss.shape
    counts = torch.tensor([float(miss.sum()), float(l * t * k), float(miss.any(-1).sum()), float(l * t)],
                          dtype=torch.float64, device=miss.device)
    if reduce is not None:
        counts = reduce(counts)
    c = counts.tolist()
    nan = float("nan")  # no token counted (as the mean of nothing)
    return {"routing_mismatch_frac": c[0] / c[1] if c[1] else nan,
            "routing_mismatch_tokens_frac": c[2] / c[3] if c[3] else nan}

