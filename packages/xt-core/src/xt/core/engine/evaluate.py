"""Held-out loss: the token-mean cross-entropy of fixed micro-batches, the same on any layout.

Every rank runs its own evaluation micro-batches through `Engine.forward` (no autograd, the
training precision, eval mode) and sums the model's ``loss_sum`` and its label tokens (labels !=
-100) in float64; one all-reduce over `DistContext` adds the ranks' sums. The loss is
``Σ loss_sum / Σ tokens`` (docs/architecture.md, Loss normalisation, without the aux term), so
how the batches are spread over ranks, sequence shards or micro-batches does not change it
beyond float rounding.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from xt.core.labels import IGNORE_INDEX

__all__ = ["evaluate_loss"]


def evaluate_loss(engine: Any, batches: Iterable[Mapping[str, Any]]) -> dict[str, float | int]:
    """Evaluate `engine`'s model on this rank's `batches` (collective: call on every rank with
    the same number of batches).

    Args:
        engine: an `xt.core.engine.Engine` (its model, precision and `DistContext`).
        batches: micro-batches in the contract format (docs/contracts.md), each with ``labels``.

    Returns:
        ``{"eval_loss": nats per label token, "eval_ppl": exp(eval_loss), "eval_tokens": label
        tokens over all ranks}``; loss and perplexity are NaN when there are no label tokens.
    """
    sums = torch.zeros(2, dtype=torch.float64, device=engine.device)
    for batch in batches:
        out = engine.forward([batch], training=False)[0]
        sums[0] += out.loss_sum.detach().to(torch.float64)
        sums[1] += (batch["labels"] != IGNORE_INDEX).sum().to(sums.device, torch.float64)
    engine.dist.all_reduce_sum(sums)
    loss_sum, tokens = sums.tolist()
    loss = loss_sum / tokens if tokens else math.nan
    ppl = math.exp(min(loss, 700.0)) if not math.isnan(loss) else math.nan  # exp(700) ~ 1e304: no overflow
    return {"eval_loss": loss, "eval_ppl": ppl, "eval_tokens": int(tokens)}
