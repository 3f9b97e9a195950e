"""Splitting documents into chunks, packing chunks into micro-batches, building the batch dict.

The batch format is the one in docs/contracts.md: 1-D packed ``input_ids [T]`` int64, pre-shifted
``labels [T]`` int64 (``labels[t]`` is the target of position t, ``-100`` at each document's last
token and where the loss mask is off), ``position_ids [T]`` int64 restarting at 0 per document,
``cu_seqlens [D+1]`` int32 and ``max_seqlen`` (python int).

A document longer than ``chunk_len`` is split into consecutive chunks of at most ``chunk_len``
tokens; each chunk is then a document of its own (positions restart, its last token has no
target). Every token of every document is in exactly one chunk, in order: nothing is dropped.
"""
from __future__ import annotations

import torch

from xt.core.labels import IGNORE_INDEX


def split_documents(doc_offsets: torch.Tensor, chunk_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split documents into chunks of at most `chunk_len` tokens.

    Args:
        doc_offsets: ``[D+1]`` int64, document d is ``tokens[doc_offsets[d]:doc_offsets[d+1]]``.
        chunk_len: maximum chunk length in tokens (>= 1).

    Returns:
        ``(chunk_starts [C], chunk_lengths [C])`` int64, in document order; chunk c covers
        ``tokens[chunk_starts[c] : chunk_starts[c] + chunk_lengths[c]]``.
    """
    if chunk_len < 1:
        raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
    lengths = doc_offsets[1:] - doc_offsets[:-1]
    n_chunks = (lengths + chunk_len - 1) // chunk_len
    doc_of_chunk = torch.repeat_interleave(torch.arange(len(lengths)), n_chunks)
    first_chunk = torch.cumsum(n_chunks, 0) - n_chunks
    k = torch.arange(len(doc_of_chunk)) - first_chunk[doc_of_chunk]
    starts = doc_offsets[:-1][doc_of_chunk] + k * chunk_len
    ends = torch.minimum(starts + chunk_len, doc_offsets[1:][doc_of_chunk])
    return starts, ends - starts


def pack_boundaries(lengths: list[int], budget: int) -> list[int]:
    """Greedy in-order packing: where each micro-batch starts in the sequence `lengths`.

    Chunks are taken in the given order and added to the current micro-batch while its total stays
    <= `budget` tokens; a chunk that does not fit starts the next micro-batch. Returns ``[b0=0, b1,
    ..., bM=len(lengths)]``: micro-batch m holds chunks ``lengths[b_m:b_{m+1}]``.

    Raises:
        ValueError: a chunk longer than `budget` (split documents first).
    """
    bounds, total = [0], 0
    for i, n in enumerate(lengths):
        if n > budget:
            raise ValueError(f"chunk of {n} tokens exceeds the micro-batch budget {budget}")
        if total + n > budget and total > 0:
            bounds.append(i)
            total = 0
        total += n
    if lengths:
        bounds.append(len(lengths))
    return bounds


def make_batch(tokens: torch.Tensor, loss_mask: torch.Tensor | None, starts: torch.Tensor,
               lengths: torch.Tensor) -> dict:
    """Build one packed micro-batch from chunks of a flat token array.

    Args:
        tokens: ``[N]`` int32/int64, all documents end to end.
        loss_mask: ``[N]`` bool or None (all True): whether token i is a training target.
        starts, lengths: ``[D]`` int64, the chunks to lay end to end (each length >= 1).

    Returns:
        The contract batch: ``input_ids [T]`` int64, ``labels [T]`` int64 (pre-shifted: token
        t+1 of the same chunk if it is a target, else -100; -100 at each chunk's last token),
        ``position_ids [T]`` int64, ``cu_seqlens [D+1]`` int32, ``max_seqlen`` int.
    """
    lengths = lengths.to(torch.int64)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    cu[1:] = torch.cumsum(lengths, 0)
    total = int(cu[-1])
    pos = torch.arange(total) - torch.repeat_interleave(cu[:-1], lengths)
    src = torch.repeat_interleave(starts.to(torch.int64), lengths) + pos
    nxt = (src + 1).clamp(max=len(tokens) - 1)
    labels = tokens[nxt].to(torch.int64)
    if loss_mask is not None:
        labels[~loss_mask[nxt]] = IGNORE_INDEX
    labels[cu[1:] - 1] = IGNORE_INDEX
    return {
        "input_ids": tokens[src].to(torch.int64),
        "labels": labels,
        "position_ids": pos,
        "cu_seqlens": cu.to(torch.int32),
        "max_seqlen": int(lengths.max()) if len(lengths) else 0,
    }
