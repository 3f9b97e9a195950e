"""Losses: fused linear cross-entropy and per-token log-probabilities/entropy of an LM head
(chunked, never materialise the ``[T, V]`` logits)."""
from xt.kernels.loss.linear_ce import default_chunk_size, linear_cross_entropy
from xt.kernels.loss.log_probs import TokenLogProbs, linear_log_probs

__all__ = ["linear_cross_entropy", "linear_log_probs", "TokenLogProbs", "default_chunk_size"]
