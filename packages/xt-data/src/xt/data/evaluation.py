"""Held-out data for evaluation: the ``[eval]`` section, a split of the training source by
documents, and the fixed micro-batches each rank evaluates.

Where the held-out documents come from:

- ``eval.paths``: other files, read with the ``[data]`` format, mode, encoding and tokenizer.
- ``eval.split = f``: a fraction f of the training source's documents, chosen by a permutation
  seeded with ``data.seed``; the training loader then never sees them (`split_dataset`).

The held-out documents are packed in source order (no shuffle) with the training budget into one
global list of micro-batches, cut after ``eval.max_tokens`` tokens. Data-parallel rank r of R
takes micro-batches r, r + R, ...; every rank gets the same number (ceil(M / R)) so that sharded
forwards, which are collective, stay in step: a rank short of one repeats a batch with every label
set to -100, which adds nothing to the loss sums (`EvalBatches`).

Image-text data (``[data.vision]``) takes the same path: the held-out conversations are read and
tokenized as for training (`xt.data.vl_dataset.build_vl_dataset`; a split keeps each document's
images with it), packed whole, and each of this rank's micro-batches carries the ``pixel_values``
of its documents (`xt.data.vl_loader.document_pixels`), as a training micro-batch does.
"""
from __future__ import annotations

import math

import msgspec
import torch

from xt.core.config import ConfigStruct, require
from xt.core.labels import IGNORE_INDEX
from xt.data.config import DataConfig
from xt.data.dataset import TokenizedDataset, build_dataset
from xt.data.errors import DataError
from xt.data.packing import make_batch, pack_boundaries, split_documents
from xt.data.vl_dataset import VLDataset, build_vl_dataset
from xt.data.vl_loader import document_pixels

__all__ = ["EvalConfig", "EvalBatches", "split_dataset", "eval_data_config", "build_eval_batches"]


class EvalConfig(ConfigStruct):
    """Evaluation on held-out data: loss and perplexity in the metrics and the plot.

    Attributes:
        every_steps: evaluate after every this many optimizer steps (and after the last one); 0 =
            never. >= 0.
        paths: held-out files or folders (read like ``[data]`` files); or empty with `split`.
        split: hold out this fraction of the training source's documents instead, in (0, 1);
            the training stream then skips them. 0 = no split.
        max_tokens: evaluate on at most this many tokens (whole micro-batches, at least one), >= 2.
    """

    every_steps: int = 0
    paths: tuple[str, ...] = ()
    split: float = 0.0
    max_tokens: int = 65536

    def __post_init__(self) -> None:
        """Check values and that an enabled evaluation has exactly one source.

        Raises:
            xt.core.config.ConfigFieldError: naming the field (``eval.FIELD`` with file and line).
        """
        require(self.every_steps >= 0, "every_steps", f"must be >= 0 (0 = no evaluation), got {self.every_steps}")
        require(isinstance(self.split, (int, float)) and 0 <= self.split < 1, "split",
                f"must be in [0, 1) (a fraction of the documents), got {self.split!r}")
        require(not (self.paths and self.split), "split", "give held-out paths or a split, not both")
        require(self.every_steps == 0 or bool(self.paths) or self.split > 0, "every_steps",
                "needs held-out data: eval.paths = [...] or eval.split = 0.05 (a fraction of the documents)")
        require(self.every_steps > 0 or not (self.paths or self.split), "every_steps",
                "is 0 (no evaluation) but held-out data is set; set eval.every_steps (e.g. 50)")
        require(self.max_tokens >= 2, "max_tokens", f"must be >= 2, got {self.max_tokens}")

    @property
    def enabled(self) -> bool:
        """True when evaluation runs (``every_steps > 0``)."""
        return self.every_steps > 0


def _subset(ds: TokenizedDataset, docs: torch.Tensor, tag: str) -> TokenizedDataset:
    """The documents `docs` (indices, in this order) of `ds` as a dataset of their own."""
    starts, ends = ds.doc_offsets[docs], ds.doc_offsets[docs + 1]
    lengths = ends - starts
    idx = torch.cat([torch.arange(int(s), int(e)) for s, e in zip(starts, ends)]) if len(docs) else \
        torch.zeros(0, dtype=torch.int64)
    offsets = torch.zeros(len(docs) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    mask = None if ds.loss_mask is None else ds.loss_mask[idx]
    args = (ds.tokens[idx], offsets, mask, ds.skipped, ds.empty, list(ds.skipped_examples), f"{ds.key}-{tag}")
    if isinstance(ds, VLDataset):  # the documents' images go with them
        keep = docs.tolist()
        return VLDataset(*args, [ds.images[d] for d in keep], [ds.tiles[d] for d in keep], [ds.wheres[d] for d in keep])
    return TokenizedDataset(*args)


def split_dataset(ds: TokenizedDataset, fraction: float, seed: int) -> tuple[TokenizedDataset, TokenizedDataset]:
    """``(train, held_out)``: ``max(1, round(fraction * D))`` documents drawn by a permutation
    seeded with `seed` are held out (in source order); the rest, in source order, train. The
    datasets' keys name the split, so loader states of an unsplit run do not load into them.

    Raises:
        xt.data.DataError: fewer than 2 documents (nothing would be left to train on).
    """
    n = ds.num_documents
    if n < 2:
        raise DataError(f"eval.split: the training source has {n} document(s); nothing to hold out")
    k = min(n - 1, max(1, round(fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_919 + 104_729))
    held = torch.sort(perm[:k]).values
    keep = torch.ones(n, dtype=torch.bool)
    keep[held] = False
    tag = f"split{fraction!r}"
    return _subset(ds, torch.nonzero(keep).flatten(), f"train-{tag}"), _subset(ds, held, f"eval-{tag}")


def eval_data_config(data: DataConfig, ev: EvalConfig) -> DataConfig:
    """The ``[data]`` section that reads `ev`'s held-out source: `ev.paths` as files (same format,
    mode, encoding, tokenizer, EOS and budget), or the training source itself for a split."""
    if ev.paths:
        return msgspec.structs.replace(data, source="files", paths=tuple(ev.paths), max_documents=None, mix=())
    return data


class EvalBatches:
    """This rank's fixed evaluation micro-batches; iterate it once per evaluation.

    Attributes:
        batches: the micro-batches, padded to the same count on every rank (module docstring).
        num_tokens: held-out label tokens over all ranks (what the loss averages over).
    """

    def __init__(self, batches: list[dict], num_tokens: int) -> None:
        self.batches, self.num_tokens = batches, num_tokens

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def state_dict(self) -> dict:
        """Nothing to save: the batches are fixed."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore."""


def _no_loss(batch: dict) -> dict:
    return {**batch, "labels": torch.full_like(batch["labels"], IGNORE_INDEX)}


def build_eval_batches(data: DataConfig, ev: EvalConfig, dp_rank: int = 0, dp_size: int = 1,
                       tokenizer=None) -> EvalBatches:
    """The evaluation micro-batches of data-parallel rank `dp_rank` of `dp_size` (module docstring).

    Raises:
        xt.data.DataError: unreadable or empty held-out data (image-text data: also missing or
            changed images, naming the record), or a split of a data mix.
    """
    if ev.split and data.source == "mix":
        raise DataError("eval.split: a data mix has no single source to split; give held-out files in eval.paths")
    cfg = eval_data_config(data, ev)
    ds = build_vl_dataset(cfg, tokenizer) if cfg.vision is not None else build_dataset(cfg, tokenizer)
    if ev.split:
        ds = split_dataset(ds, ev.split, data.seed)[1]
    starts, lengths = split_documents(ds.doc_offsets, cfg.chunk_len)
    bounds = pack_boundaries(lengths.tolist(), cfg.tokens_per_micro_batch)
    every, total = [], 0
    for m in range(len(bounds) - 1):
        b = make_batch(ds.tokens, ds.loss_mask, starts[bounds[m]:bounds[m + 1]], lengths[bounds[m]:bounds[m + 1]])
        if every and total + b["input_ids"].numel() > ev.max_tokens:
            break
        every.append(b)
        total += b["input_ids"].numel()
    per_rank = math.ceil(len(every) / dp_size)
    picks = [i if i < len(every) else None for i in range(dp_rank, per_rank * dp_size, dp_size)]
    if isinstance(ds, VLDataset):  # a document is one chunk; the tiles of this rank's batches only
        for i in {0 if i is None else i for i in picks}:
            every[i]["pixel_values"] = torch.cat([document_pixels(ds, d, cfg.vision)
                                                  for d in range(bounds[i], bounds[i + 1])])
    mine = [_no_loss(every[0]) if i is None else every[i] for i in picks]
    label_tokens = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in every)
    return EvalBatches(mine, label_tokens)
