"""DeepSeek-V3 multi-token prediction (MTP) modules and their loss.

Depth k (1..D) at position i predicts token ``t_{i+k+1}`` of the same document:
``h^k_i = Block_k(eh_proj([enorm(Emb(t_{i+k})); hnorm(h^{k-1}_i)]))`` and
``logits^k_i = lm_head(shared_head.norm(h^k_i))``; ``h^0`` is the main model's final-normed output.
The embedding and output head are the main model's (shared). Loss:
``L_MTP = (lambda / D) * sum_k mean_i CE(logits^k_i, t_{i+k+1})`` over positions whose target exists
in the same document and whose (pre-shifted) label is not -100.

Reference: DeepSeek-V3 Technical Report (arXiv:2412.19437) §2.2, eqs. 21-25. The concatenation order
(embedding first) and the hub key names (``model.layers.{L+k}.{enorm,hnorm,eh_proj,shared_head.norm}``)
follow the released DeepSeek-V3 checkpoint.
"""
from __future__ import annotations

import torch
from torch import nn

from xt.models.common.linear import Linear
from xt.core.labels import IGNORE_INDEX
from xt.models.common.lm_loss import head_loss_sum
from xt.models.common.norm import RMSNorm
from xt.models.common.output import LayerOutput
from xt.models.deepseek_v3.config import DeepseekV3Config
from xt.models.deepseek_v3.layers import DeepseekV3DecoderLayer

__all__ = ["DeepseekV3MTPLayer", "shift_in_document", "mtp_loss"]


class _SharedHead(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.norm = RMSNorm(hidden_size, eps)


class DeepseekV3MTPLayer(DeepseekV3DecoderLayer):
    """One MTP depth: a decoder block (MoE, as layer index >= ``first_k_dense_replace``) plus
    ``enorm``, ``hnorm`` (RMSNorm), ``eh_proj`` (``Linear(2D, D)``) and ``shared_head.norm``.

    ``forward(h_prev[T, D], emb[T, D], cos, sin, cu_seqlens, max_seqlen, doc_ids, num_docs)`` returns
    ``(LayerOutput(h^k[T, D], RouterStats | None, seq_aux | None), head_in[T, D])``: the decoder
    block's :class:`~xt.models.common.output.LayerOutput`, and ``head_in = shared_head.norm(h^k)``,
    what the shared LM head reads. The whole depth runs in ``forward``
    (called as a module), so a wrapper that hooks a layer's call (FSDP2 unit, activation
    checkpointing) covers every parameter of it.
    """

    def __init__(self, config: DeepseekV3Config, layer_idx: int, attn_backend: str = "auto",
                 expert_backend: str | None = None) -> None:
        super().__init__(config, layer_idx, attn_backend, expert_backend)
        D, eps = config.hidden_size, config.rms_norm_eps
        self.enorm, self.hnorm = RMSNorm(D, eps), RMSNorm(D, eps)
        self.eh_proj = Linear(2 * D, D, bias=False)
        self.shared_head = _SharedHead(D, eps)

    def forward(self, h_prev: torch.Tensor, emb: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cu_seqlens: torch.Tensor, max_seqlen: int, doc_ids: torch.Tensor | None = None,
                num_docs: int = 0) -> tuple[LayerOutput, torch.Tensor]:
        """``h_prev, emb [T, D] -> (LayerOutput(h^k [T, D], stats, seq_aux), head_in [T, D])``."""
        x = self.eh_proj(torch.cat([self.enorm(emb), self.hnorm(h_prev)], dim=-1))
        out = super().forward(x, cos, sin, cu_seqlens, max_seqlen, doc_ids, num_docs)
        return out, self.shared_head.norm(out.hidden)


def shift_in_document(x: torch.Tensor, k: int, doc_ids: torch.Tensor, fill: int) -> torch.Tensor:
    """``y[i] = x[i + k]`` when token ``i + k`` is in the same document as ``i``, else ``fill``.

    ``x, doc_ids``: ``[T]``; returns ``[T]`` like ``x``.
    """
    T = x.shape[0]
    y = torch.full_like(x, fill)
    if k < T:
        same = doc_ids[k:] == doc_ids[:T - k]
        y[:T - k] = torch.where(same, x[k:], torch.full_like(x[k:], fill))
    return y


def mtp_loss(layers, embed_tokens: nn.Module, lm_head: nn.Module, hidden: torch.Tensor, p, cos, sin, doc_ids,
             seq_docs, num_docs):
    """Run the MTP depths `layers` on packed input ``p``, sharing the main model's embedding and head.

    Args:
        layers: the :class:`DeepseekV3MTPLayer` depths in order (``model.mtp``).
        embed_tokens: the main model's token embedding (``[V, D]``).
        lm_head: the main model's output head (``Linear(D, V)``).
        hidden: ``[T, D]`` main-model output after the final norm (``h^0``).
        p: :class:`~xt.models.common.output.PackedInput` with labels.
        cos, sin: rope of the packed positions; doc_ids: ``[T]`` int64; seq_docs/num_docs: for the
            sequence-wise balance loss (None to skip).

    Returns:
        ``(mean over depths of the mean CE (float32 scalar), router stats list, seq-loss list)``;
        the caller multiplies by ``mtp_loss_weight``.

    Raises:
        ValueError: `layers` is empty (there is no loss to average).
    """
    if len(layers) == 0:
        raise ValueError("mtp_loss: no MTP layers (config.mtp_layers is 0)")
    losses, stats, seq = [], [], []
    h = hidden
    for k, layer in enumerate(layers, start=1):
        emb = embed_tokens(shift_in_document(p.input_ids, k, doc_ids, 0))
        out, head_in = layer(h, emb, cos, sin, p.cu_seqlens, p.max_seqlen, seq_docs, num_docs)
        h = out.hidden
        target = shift_in_document(p.labels, k, doc_ids, IGNORE_INDEX)
        n = (target != IGNORE_INDEX).sum().clamp(min=1)
        losses.append(head_loss_sum(head_in, lm_head.weight, target) / n)  # fused: no [T, V] logits
        if out.router_stats is not None:
            stats.append(out.router_stats)
        if out.seq_aux is not None:
            seq.append(out.seq_aux)
    return torch.stack(losses).mean(), stats, seq
