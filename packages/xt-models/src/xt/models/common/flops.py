"""Model FLOPs per token for MFU (docs/architecture.md, MFU; the PaLM-paper accounting,
Chowdhery et al. 2022, arXiv:2204.02311, appendix B).

``6 * N_active + 6 * L * H * hd * S``: N_active counts non-embedding weights including the LM
head and only the top-k routed experts (plus shared experts and the router); the second term is
causal attention (``12 * L * H * hd * S`` halved by the causal mask), with S the sequence length.
"""
from __future__ import annotations

__all__ = ["causal_lm_flops_per_token"]


def causal_lm_flops_per_token(active_params: int, num_layers: int, num_attention_heads: int,
                              head_dim: int, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token; see the module docstring.

    Raises:
        ValueError: negative ``seq_len``.
    """
    if seq_len < 0:
        raise ValueError(f"seq_len must be >= 0; got {seq_len}")
    return 6.0 * active_params + 6.0 * num_layers * num_attention_heads * head_dim * seq_len
