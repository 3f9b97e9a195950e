"""Test helpers for xt.core: a tiny packed-input language model, a stateful loader, and a model
whose loss depends on a `Stateful` controller (for named extra checkpoint state).

Both follow docs/contracts.md: the model takes a packed batch (input_ids[T], labels[T] pre-shifted,
position_ids[T], cu_seqlens[D+1]) and returns loss_sum / aux_loss / metrics / logits; the loader
yields such batches and restores its position from `state_dict()`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100


@dataclass
class TinyOutput:
    loss_sum: torch.Tensor
    aux_loss: torch.Tensor | None
    logits: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class TinyLM(nn.Module):
    """Embedding → per-document causal running mean → MLP (with dropout) → tied LM head.

    Tokens see only earlier tokens of their own document (cu_seqlens), so packing matters the way
    it does for a real model. `aux_coef > 0` adds a per-micro-batch normalised auxiliary loss
    (mean squared hidden state over the micro-batch's tokens), like a router load-balancing loss.
    """

    def __init__(self, vocab: int = 23, dim: int = 8, dropout: float = 0.0, aux_coef: float = 0.0,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, dtype=dtype)
        self.mix = nn.Linear(dim, dim, dtype=dtype)
        self.norm = nn.LayerNorm(dim, dtype=dtype)
        self.head = nn.Linear(dim, vocab, bias=True, dtype=dtype)
        self.head.weight = self.emb.weight  # tied, as in small Qwen3 models
        self.drop = nn.Dropout(dropout)
        self.aux_coef = aux_coef
        self.dim = dim

    def forward(self, input_ids, labels, position_ids=None, cu_seqlens=None, max_seqlen=None):
        h = self.emb(input_ids)
        if cu_seqlens is None:
            cu_seqlens = torch.tensor([0, input_ids.numel()], device=input_ids.device)
        segs = []
        for a, b in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
            seg = h[a:b]
            n = torch.arange(1, b - a + 1, dtype=seg.dtype, device=seg.device).unsqueeze(-1)
            segs.append(seg.cumsum(0) / n)
        h = torch.cat(segs) if segs else h
        h = self.norm(h + self.drop(torch.tanh(self.mix(h))))
        logits = self.head(h)
        loss_sum = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="sum")
        aux = self.aux_coef * h.float().pow(2).mean() if self.aux_coef else None
        metrics = {"h_norm": h.detach().float().norm(dim=-1).mean(),
                   "first_two": h.detach().float().mean(0)[:2]}
        return TinyOutput(loss_sum=loss_sum, aux_loss=aux, logits=logits, metrics=metrics)

    def flops_per_token(self, seq_len: int) -> float:
        n = sum(p.numel() for p in self.parameters())
        return 6.0 * n + 6.0 * self.dim * seq_len


def make_doc(gen: torch.Generator, length: int, vocab: int, ignore_p: float = 0.2):
    """One document: ids [L] and pre-shifted labels [L] (-100 at the end and at random spots)."""
    ids = torch.randint(0, vocab, (length,), generator=gen)
    labels = torch.full((length,), IGNORE, dtype=torch.long)
    labels[:-1] = ids[1:]
    drop = torch.rand(length, generator=gen) < ignore_p
    labels[drop] = IGNORE
    return ids, labels


def pack(docs) -> dict:
    """Pack documents into one varlen micro-batch (docs/contracts.md)."""
    lens = [len(d[0]) for d in docs]
    cu = torch.zeros(len(docs) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lens).cumsum(0)
    return {
        "input_ids": torch.cat([d[0] for d in docs]),
        "labels": torch.cat([d[1] for d in docs]),
        "position_ids": torch.cat([torch.arange(n) for n in lens]),
        "cu_seqlens": cu,
        "max_seqlen": max(lens),
    }


class StatefulLoader:
    """Deterministic loader: batch i is a function of (seed, i) only; state = {"index": i}.

    Args:
        vocab: token range.
        docs_per_batch: documents per micro-batch, lengths drawn in [2, 9].
        limit: number of batches before it is exhausted (None: endless).
        repeat: serve the same batch every time.
    """

    def __init__(self, vocab: int = 23, docs_per_batch: int = 3, seed: int = 7,
                 limit: int | None = None, repeat: bool = False) -> None:
        self.vocab, self.docs, self.seed, self.limit = vocab, docs_per_batch, seed, limit
        self.repeat = repeat  # always serve batch 0 (to check that the loss falls)
        self.index = 0
        self.served: list[int] = []

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.limit is not None and self.index >= self.limit:
            raise StopIteration
        gen = torch.Generator().manual_seed(self.seed * 100_003 + (0 if self.repeat else self.index))
        lens = torch.randint(2, 10, (self.docs,), generator=gen).tolist()
        batch = pack([make_doc(gen, n, self.vocab) for n in lens])
        self.served.append(self.index)
        self.index += 1
        return batch

    def state_dict(self) -> dict:
        return {"index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.index = int(state["index"])


class AdaptiveCoef:
    """Stateful that changes every forward and feeds back into the loss, like an RL KL controller:
    an EMA of the micro-batch loss (a tensor), a call count (int) and a history (list)."""

    def __init__(self):
        self.ema = torch.zeros(())
        self.calls = 0
        self.history: list[float] = []

    def update(self, value: torch.Tensor) -> torch.Tensor:
        self.ema = 0.7 * self.ema + 0.3 * value.detach()
        self.calls += 1
        self.history.append(round(float(self.ema), 6))
        return self.ema

    def state_dict(self):
        return {"ema": self.ema.clone(), "calls": self.calls, "history": list(self.history)}

    def load_state_dict(self, state):
        self.ema, self.calls, self.history = state["ema"].clone(), state["calls"], list(state["history"])


class CoefLM(TinyLM):
    """TinyLM whose aux loss is scaled by the controller's running value: forgetting the
    controller's state on resume changes the losses."""

    def __init__(self, coef: AdaptiveCoef):
        super().__init__(dropout=0.2)
        self.coef = coef

    def forward(self, **batch):
        out = super().forward(**batch)
        scale = self.coef.update(out.loss_sum / (batch["labels"] != IGNORE).sum().clamp(min=1))
        out.aux_loss = 0.05 * scale * out.logits.float().pow(2).mean()
        return out
