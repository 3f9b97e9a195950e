"""Losses: fused linear + cross-entropy (chunked, never materialises the ``[T, V]`` logits)."""
from xt.kernels.loss.linear_ce import default_chunk_size, linear_cross_entropy

__all__ = ["linear_cross_entropy", "default_chunk_size"]
