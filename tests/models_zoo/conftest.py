"""Shared helpers for the model-zoo parity tests (HF transformers is the reference)."""
from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64 (ARCHITECTURE.md section 4)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def random_docs(vocab_size: int, lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    """Random token documents of the given lengths."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_size, (n,), generator=g) for n in lengths]


def pack(docs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Packed batch per docs/contracts.md: pre-shifted labels, -100 at each document's last token."""
    ids = torch.cat(docs)
    labels = torch.cat([torch.cat([d[1:], torch.tensor([-100])]) for d in docs])
    pos = torch.cat([torch.arange(len(d)) for d in docs])
    cu = torch.zeros(len(docs) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor([len(d) for d in docs]).cumsum(0)
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "cu_seqlens": cu}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
