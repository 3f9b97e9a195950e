"""Loss objects that own the LM head: the model returns its final hidden states, the loss applies
the head projection and the reduction through the fused kernels (never ``[T, V]`` logits).

Shape legend: T packed tokens, D hidden size, V vocabulary size.

A family called with ``return_hidden=True`` returns ``out.hidden [T, D]`` (after the final norm)
and ``out.head_weight [V, D]`` (the head weight as the forward used it, so gradients reach the
model's head), and leaves ``loss_sum`` to the caller (`xt.models.common.lm_loss.head_outputs`).
Auxiliary losses (routers, DeepSeek-V3's MTP) are still the model's.

- `HeadCrossEntropy`: an engine `Loss` (`xt.core.engine.objective`) with the engine's default
  objective, ``CE_sum / N_global + aux_loss / (M * world_size)``, whose CE comes from the hidden
  states. It gives the same loss and gradients as the model's own fused loss.
- `token_log_probs`: per-token ``log p(label)`` (optionally temperature-scaled) and entropy from
  the same outputs, what policy-gradient losses consume (`xt.kernels.loss.linear_log_probs`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from xt.core.engine.loss import micro_batch_objective
from xt.core.labels import IGNORE_INDEX
from xt.models.common.lm_loss import head_loss_sum

__all__ = ["HeadCrossEntropy", "token_log_probs"]


def _hidden_and_head(out: Any, labels: torch.Tensor, who: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    hidden, weight = getattr(out, "hidden", None), getattr(out, "head_weight", None)
    if not isinstance(hidden, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError(f"{who}: the model output has no hidden/head_weight; call the model with "
                        "return_hidden=True (docs/contracts.md, Model forward)")
    labels = labels.reshape(-1)
    if labels.shape[0] != hidden.shape[0]:
        raise ValueError(f"{who}: labels hold {labels.shape[0]} tokens but the model returned "
                         f"{hidden.shape[0]} hidden states; pass packed batches (docs/contracts.md, Batches)")
    return hidden, weight, labels


class HeadCrossEntropy:
    """Global token-mean cross-entropy computed from ``out.hidden`` and ``out.head_weight``.

    As an engine `Loss`: `model_inputs` adds ``return_hidden=True`` to the model call, and the
    call returns ``head_loss_sum / max(N_global, 1) + aux_loss / (M * world_size)``. It also sets
    ``out.loss_sum`` (the fused CE sum, float32), so the step's logged ``loss`` is the same as
    under the default `TokenMeanLoss`.

    Raises:
        TypeError: the output has no ``hidden`` / ``head_weight``.
        ValueError: the batch's ``labels`` do not match the hidden states in length.
    """

    def model_inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The batch with ``return_hidden=True`` for the model call."""
        return {**batch, "return_hidden": True}

    def __call__(self, out: Any, batch: Mapping[str, Any], ctx: Any) -> torch.Tensor:
        hidden, weight, labels = _hidden_and_head(out, batch["labels"], "HeadCrossEntropy")
        out.loss_sum = head_loss_sum(hidden, weight, labels)
        return micro_batch_objective(out, ctx.global_tokens, ctx.num_micro_batches, ctx.world_size)

    def __repr__(self) -> str:
        return "HeadCrossEntropy()"


def token_log_probs(out: Any, labels: torch.Tensor, *, temperature: float = 1.0,
                    return_entropy: bool = False, ignore_index: int = IGNORE_INDEX):
    """Per-token log-probabilities of ``labels`` under ``softmax(hidden @ head_weightᵀ / temperature)``.

    Args:
        out: a model output of a ``return_hidden=True`` call.
        labels: ``[T]`` (or any shape with T elements) int64 pre-shifted targets; ``ignore_index``
            positions give 0.
        temperature: > 0; the sampling temperature of the rollout whose log-probs these must match.
        return_entropy: also the entropy of that distribution, nats.
        ignore_index: label without a log-prob.

    Returns:
        `xt.kernels.loss.TokenLogProbs` ``(log_probs [T] float32, entropy [T] float32 or None)``,
        differentiable w.r.t. the model's parameters.

    Raises:
        TypeError: the output has no ``hidden`` / ``head_weight``.
        ValueError: labels and hidden states differ in length, or a bad ``temperature``.
    """
    from xt.kernels.loss import linear_log_probs

    hidden, weight, labels = _hidden_and_head(out, labels, "token_log_probs")
    return linear_log_probs(hidden, weight, labels, temperature=temperature,
                            return_entropy=return_entropy, ignore_index=ignore_index)
