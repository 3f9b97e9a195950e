"""Helpers shared by the xt.data tests."""
from __future__ import annotations

import torch

from xt.data.dataset import TokenizedDataset


def make_dataset(docs: list[list[int]], masks: list[list[bool]] | None) -> TokenizedDataset:
    """A TokenizedDataset from token lists (and optional per-token loss masks), no tokenizer."""
    offsets = [0]
    for d in docs:
        offsets.append(offsets[-1] + len(d))
    tokens = torch.tensor([t for d in docs for t in d], dtype=torch.int32)
    mask = None if masks is None else torch.tensor([b for m in masks for b in m], dtype=torch.bool)
    return TokenizedDataset(tokens, torch.tensor(offsets, dtype=torch.int64), mask, key="test")
