"""Per-token log-probabilities (and entropy) of an LM head without materialising the logits.

Shape legend: T tokens, D hidden size, V vocabulary size.

What policy-gradient losses need from the LM head: ``log p(label_t)`` per token under
``softmax(hidden @ weightᵀ / temperature)``, differentiable for any ``[T]`` upstream gradient,
and optionally the entropy of that distribution. The chunked backends are in
:mod:`xt.kernels.loss.per_token` (method and numerics there).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

from xt.core.labels import IGNORE_INDEX
from xt.kernels import registry
from xt.kernels.loss._head import check_head_inputs, chunk_kind, resolve_chunk

__all__ = ["TokenLogProbs", "linear_log_probs", "linear_log_probs_backend"]


class TokenLogProbs(NamedTuple):
    """Result of :func:`linear_log_probs`.

    Attributes:
        log_probs: ``[T]`` float32, ``log p(label_t)``; 0 where the label is ``ignore_index``.
        entropy: ``[T]`` float32 entropy in nats (0 where the label is ``ignore_index``), or None
            unless ``return_entropy``.
    """
    log_probs: torch.Tensor
    entropy: torch.Tensor | None


def _reference(hidden, weight, labels, ignore_index, inv_temp, return_entropy):
    """Full logits + ``torch.log_softmax`` (materialises ``[T, V]``; the tests' ground truth)."""
    acc = torch.promote_types(hidden.dtype, torch.float32)
    logp_all = torch.log_softmax((hidden @ weight.t()).to(acc) * inv_temp, dim=-1)
    valid = labels != ignore_index
    logp = logp_all.gather(1, torch.where(valid, labels, 0)[:, None])[:, 0]
    zero = logp.new_zeros(())
    ent = None
    if return_entropy:
        ent = torch.where(valid, -(logp_all.exp() * logp_all).sum(-1), zero).float()
    return TokenLogProbs(torch.where(valid, logp, zero).float(), ent)


def linear_log_probs_backend(hidden, weight, labels, *, temperature=1.0, return_entropy=False, ignore_index=IGNORE_INDEX,
                             chunk_size=None, backend="auto"):
    """:func:`linear_log_probs` with an explicit backend name (see that function)."""
    fn = "linear_log_probs"
    check_head_inputs(fn, hidden, weight, labels)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"{fn}: temperature must be a finite number > 0; got {temperature!r}")
    chunk = resolve_chunk(fn, chunk_size, hidden.shape[0], weight.shape[0])
    labels = labels.long()
    inv_temp = 1.0 / float(temperature)
    if backend == "reference":
        return _reference(hidden, weight, labels, ignore_index, inv_temp, return_entropy)
    from xt.kernels.loss.per_token import token_stats
    logp, ent, _ = token_stats(hidden, weight, labels, ignore_index, inv_temp, return_entropy, chunk,
                               chunk_kind(backend, hidden.device))
    return TokenLogProbs(logp.float(), ent.float() if return_entropy else None)


def linear_log_probs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                     temperature: float = 1.0, return_entropy: bool = False, ignore_index: int = IGNORE_INDEX,
                     chunk_size: int | None = None, backend: str | None = None) -> TokenLogProbs:
    """Per-token ``log softmax(hidden @ weightᵀ / temperature)[label]`` without the ``[T, V]`` logits.

    ``log_probs_t = y_t[label_t] − logsumexp_v y_tv`` and ``entropy_t = −Σ_v p_tv log p_tv`` with
    ``y_t = hidden_t @ weightᵀ / temperature``, ``p_t = softmax(y_t)``. Both are differentiable
    w.r.t. ``hidden`` and ``weight`` for any ``[T]`` upstream gradient (``dH/dy = −p·(log p + H)``);
    ignored tokens get 0 and no gradient. The chunking follows Liger-Kernel's fused linear
    cross-entropy (Hsu et al. 2024) and the backward recomputes each chunk's logits as Cut
    Cross-Entropy does (Wijmans et al. 2024): see :mod:`xt.kernels.loss.per_token`. With
    ``temperature=1``, ``-log_probs`` is ``linear_cross_entropy(..., reduction="none")``.

    Args:
        hidden: ``[T, D]`` final hidden states (bf16/fp16/fp32/fp64).
        weight: ``[V, D]`` LM-head weight (``nn.Linear`` layout), same dtype.
        labels: ``[T]`` integer targets in ``[0, V)`` (already shifted, ``xt`` batch contract), or
            ``ignore_index``.
        temperature: the logits are divided by it before the softmax (finite, > 0).
        return_entropy: also return the per-token entropy.
        ignore_index: label value of tokens without output.
        chunk_size: tokens per logits block (default ``default_chunk_size``: ≤ 2^28 logits).
        backend: ``"triton"`` (Triton row kernels for the forward statistics and the in-place
            backward; every output has a Triton path), ``"torch"`` (chunked torch ops),
            ``"reference"`` (full logits + ``torch.log_softmax``: materialises ``[T, V]``),
            ``"npu"`` (= torch), ``"auto"`` or ``None`` (the process-wide choice of the ``"loss"``
            op family, see :mod:`xt.kernels.moe.backends`).

    Returns:
        :class:`TokenLogProbs` ``(log_probs [T] float32, entropy [T] float32 or None)``.

    Raises:
        ValueError: mismatched shapes or dtypes, non-integer ``labels``, a ``temperature`` that is
            not a finite positive number, a ``chunk_size`` that is not a positive int, or an
            unknown ``backend``.
    """
    return registry.dispatch("log_probs", backend)(hidden, weight, labels, temperature=temperature,
                                                   return_entropy=return_entropy, ignore_index=ignore_index,
                                                   chunk_size=chunk_size)


registry.register("log_probs", lambda name: functools.partial(linear_log_probs_backend, backend=name))
