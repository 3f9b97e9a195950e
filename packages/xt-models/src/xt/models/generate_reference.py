"""Greedy decoding without a KV cache (each step re-runs the whole sequence; fine for samples)."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["generate"]


@torch.no_grad()
def generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
             eos_token_id: int | list[int] | None = None) -> torch.Tensor:
    """Append up to ``max_new_tokens`` argmax tokens to ``input_ids``.

    Args:
        model: a causal LM following the model-forward contract (packed ``[T]`` input, ``logits``).
        input_ids: ``[S]`` int64 prompt (S >= 1).
        max_new_tokens: number of tokens to add (>= 0).
        eos_token_id: stop after emitting this token (or any of these); default
            ``model.config.eos_token_id`` if present.

    Returns:
        ``[S + n]`` int64 on the device of ``input_ids``, ``n <= max_new_tokens``.

    Raises:
        ValueError: ``input_ids`` not a non-empty 1-D tensor, or negative ``max_new_tokens``.
    """
    if input_ids.dim() != 1 or input_ids.numel() == 0:
        raise ValueError(f"input_ids must be a non-empty [S] tensor; got {tuple(input_ids.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0; got {max_new_tokens}")
    if eos_token_id is None:
        eos_token_id = getattr(getattr(model, "config", None), "eos_token_id", None)
    stop = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
    was_training = model.training
    model.eval()
    ids = input_ids
    try:
        for _ in range(max_new_tokens):
            logits = model(ids).logits
            nxt = logits[-1].argmax()
            ids = torch.cat([ids, nxt.view(1).to(ids.dtype)])
            if int(nxt) in stop:
                break
    finally:
        model.train(was_training)
    return ids
