"""Next-token sampling of KV-cache generation: greedy, or temperature then nucleus (top-p) filtering,
and the log-probabilities of the distribution actually sampled from.

Shape legend: B rows (sequences), V vocabulary.

Nucleus sampling: Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration",
arXiv:1904.09751.
"""
from __future__ import annotations

import torch

__all__ = ["processed_log_probs", "sample_next"]


def processed_log_probs(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """``[B, V]`` float32 log-probabilities of the distribution :func:`sample_next` samples from.

    ``log_softmax(logits / temperature)``; with ``top_p < 1`` the tokens outside the nucleus get
    ``-inf`` and the rest are renormalised (minus the log of the nucleus mass). ``temperature == 0``
    (greedy) gives the raw ``log_softmax(logits)``.

    Raises:
        ValueError: ``temperature < 0`` or ``top_p`` outside ``(0, 1]``.
    """
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"temperature must be >= 0 and top_p in (0, 1]; got {temperature}, {top_p}")
    logp = torch.log_softmax(logits.float() / (temperature or 1.0), dim=-1)
    if top_p >= 1 or temperature == 0:
        return logp
    sp, idx = logp.exp().sort(dim=-1, descending=True)
    drop = torch.zeros_like(sp, dtype=torch.bool).scatter(-1, idx, (sp.cumsum(-1) - sp) >= top_p)
    logp = logp.masked_fill(drop, float("-inf"))
    return logp - torch.logsumexp(logp, dim=-1, keepdim=True)


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row of ``logits [B, V]``.

    ``temperature == 0``: argmax (greedy). Otherwise softmax(logits / temperature) restricted to the
    smallest set of tokens whose probability reaches ``top_p`` (the most likely token always kept),
    renormalised, sampled with ``generator``. Returns ``[B]`` int64.

    Raises:
        ValueError: ``temperature < 0`` or ``top_p`` outside ``(0, 1]``.
    """
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"temperature must be >= 0 and top_p in (0, 1]; got {temperature}, {top_p}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1:
        sp, idx = probs.sort(dim=-1, descending=True)
        drop = (sp.cumsum(-1) - sp) >= top_p
        sp = sp.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, idx, sp)
    # One draw per row as an exponential race, argmax(p / E) with E ~ Exp(1): exactly what
    # torch.multinomial(p, 1) computes (same draws from the generator, same tokens), without its host
    # read of p's validity, so a CUDA graph can capture it (xt.models.common.decode_graph).
    q = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / probs.sum(-1, keepdim=True) / q).argmax(dim=-1)
