"""Tokenizing image-text conversations: chat template, placeholder tokens, assistant-only loss.

Each image's placeholder in a message becomes ``start_token image_token end_token``; the
conversation is rendered and tokenized by `xt.data.chat.encode_chats` (loss on assistant turns
only), and each ``image_token`` is then repeated ``tiles(image) * image_seq_length`` times (the
tile count from the image's size, `xt.data.images.num_tiles`), never a target. A conversation is
one document, never split: one longer than ``data.max_seq_len`` / the micro-batch budget is a bad
record (raised with ``file:line``, or skipped and counted).
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from xt.data.chat import encode_chats
from xt.data.config import DataConfig
from xt.data.dataset import TokenizedDataset
from xt.data.errors import DataError
from xt.data.images import num_tiles
from xt.data.sources import SourceStats, expand_paths
from xt.data.tokenizer import load_tokenizer, tokenizer_fingerprint
from xt.data.vl_sources import VLRecord, read_vl_jsonl

__all__ = ["VLDataset", "vl_records", "build_vl_dataset", "image_token_ids", "check_vl_source", "expand_image_tokens"]

_BATCH = 256


@dataclass
class VLDataset(TokenizedDataset):
    """A `TokenizedDataset` whose documents carry images.

    Attributes:
        images: per document, its image files in placeholder order.
        tiles: per document, the tile count of each image (thumbnail included).
        wheres: per document, ``file:line`` of its record (for errors when an image is read later).
    """

    images: list[list[Path]] = field(default_factory=list)
    tiles: list[list[int]] = field(default_factory=list)
    wheres: list[str] = field(default_factory=list)


def vl_paths(cfg: DataConfig) -> list[Path]:
    """The JSONL files of an image-text source: ``data.paths`` expanded, or the built-in corpus's."""
    from xt.data.image_corpora import corpus_jsonl

    return expand_paths(cfg.paths) if cfg.source == "files" else [corpus_jsonl(cfg.source)]


def vl_records(cfg: DataConfig, stats: SourceStats) -> Iterator[VLRecord]:
    """The image-text records of ``data.paths`` (JSONL files) or of a built-in image corpus.

    Raises:
        DataError: a path that is not JSONL, or a bad record (unless skipping).
    """
    placeholder = cfg.vision.placeholder
    for p in vl_paths(cfg):
        if p.suffix.lower() != ".jsonl" and cfg.format != "jsonl":
            raise DataError(f"data.paths: {p} is not a .jsonl file; image-text data (data.vision) is read from "
                            f"JSONL records only")
        yield from read_vl_jsonl(p, placeholder, cfg.on_error, stats, cfg.encoding)


def image_token_ids(tokenizer, cfg: DataConfig) -> tuple[int, list[int]]:
    """``(image_token id, ids of start/end tokens)`` of ``data.vision``.

    Raises:
        DataError: a token the tokenizer does not hold as one token (naming the field).
    """
    v, out = cfg.vision, {}
    for name in ("image_token", "start_token", "end_token"):
        tok = getattr(v, name)
        if not tok:
            continue
        ids = tokenizer(tok, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise DataError(f"data.vision.{name}: {tok!r} is not one token of tokenizer {cfg.tokenizer!r} (it "
                            f"splits into {len(ids)}); use a special token it has, e.g. '<|image_pad|>' for Qwen3")
        out[name] = ids[0]
    return out["image_token"], [out[k] for k in ("start_token", "end_token") if k in out]


def _image_sizes(rec: VLRecord, cfg: DataConfig) -> list[int]:
    from PIL import Image, UnidentifiedImageError

    tiles = []
    for p in rec.images:
        if not p.is_file():
            raise ValueError(f"image {str(p)!r} does not exist")
        try:
            with Image.open(p) as im:
                w, h = im.size
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"image {str(p)!r} cannot be read: {e}") from None
        tiles.append(num_tiles(h, w, cfg.vision))
    return tiles


def _with_tiles(records: Iterator[VLRecord], cfg: DataConfig, stats: SourceStats) -> Iterator[tuple[VLRecord, list[int]]]:
    for rec in records:
        try:
            yield rec, _image_sizes(rec, cfg)
        except ValueError as e:
            stats.bad(cfg.on_error, rec.where, str(e))


def expand_image_tokens(ids: list[int], mask: torch.Tensor, image_id: int, counts: list[int]) -> tuple[list[int], torch.Tensor]:
    """The k-th `image_id` of `ids` repeated ``counts[k]`` times (never targets: mask False); the
    other tokens and their `mask` entries unchanged."""
    out, keep, k = [], [], 0
    for t, m in zip(ids, mask.tolist()):
        if t == image_id:
            out.extend([image_id] * counts[k])
            keep.extend([False] * counts[k])
            k += 1
        else:
            out.append(t)
            keep.append(m)
    return out, torch.tensor(keep, dtype=torch.bool)


def build_vl_dataset(cfg: DataConfig, tokenizer=None) -> VLDataset:
    """Read and tokenize the image-text records of `cfg` (``cfg.vision`` set).

    Raises:
        DataError: bad records, missing or unreadable images, conversations over the token budget
            (each naming ``file:line``; skipped and counted with ``on_error = "skip"``), placeholder
            tokens the tokenizer lacks, or no documents at all.
    """
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer)
    v = cfg.vision
    image_id, _ = image_token_ids(tokenizer, cfg)
    stats = SourceStats()
    h = hashlib.sha256(repr((cfg.source, cfg.paths, v, cfg.chunk_len, cfg.on_error, cfg.max_documents)).encode())
    h.update(tokenizer_fingerprint(cfg.tokenizer).encode())
    for p in vl_paths(cfg):  # the records' text (images: name, size and time below)
        h.update(str(p.resolve()).encode() + b"\0" + p.read_bytes())
    pieces, masks, images, tiles, wheres = [], [], [], [], []
    records = vl_records(cfg, stats)
    if cfg.max_documents:
        records = itertools.islice(records, cfg.max_documents)
    wrap = f"{v.start_token}{v.image_token}{v.end_token}"
    sized = _with_tiles(records, cfg, stats)  # images checked in record order, as they are read
    while good := list(itertools.islice(sized, _BATCH)):
        convs = [[{**m, "content": m["content"].replace(v.placeholder, wrap)} for m in r.messages] for r, _ in good]
        for (rec, counts), (ids, mask) in zip(good, encode_chats(tokenizer, convs, [r.where for r, _ in good])):
            n = sum(1 for t in ids if t == image_id)
            if n != len(counts):
                stats.bad(cfg.on_error, rec.where, f"the text holds the image token {v.image_token!r} itself "
                                                    f"({n} found for {len(counts)} images)")
                continue
            ids, mask = expand_image_tokens(ids, mask, image_id, [c * v.image_seq_length for c in counts])
            if len(ids) > cfg.chunk_len:
                stats.bad(cfg.on_error, rec.where, f"{len(ids)} tokens ({sum(counts)} tiles x {v.image_seq_length}) "
                                                    f"exceed data.max_seq_len / tokens_per_micro_batch = {cfg.chunk_len}; "
                                                    f"raise them or lower data.vision.max_tiles")
                continue
            pieces.append(torch.tensor(ids, dtype=torch.int32))
            masks.append(mask)
            images.append(rec.images)
            tiles.append(counts)
            wheres.append(rec.where)
            for p in rec.images:
                h.update(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}".encode())
    if not pieces:
        where = cfg.source if cfg.source != "files" else ", ".join(cfg.paths)
        raise DataError(f"data: no image-text documents in {where} ({stats.empty} empty, {stats.skipped} skipped"
                        f"{': ' + stats.examples[0] if stats.examples else ''})")
    offsets = torch.zeros(len(pieces) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.tensor([len(p) for p in pieces]), 0)
    return VLDataset(torch.cat(pieces), offsets, torch.cat(masks), stats.skipped, stats.empty, list(stats.examples),
                     h.hexdigest()[:32], images, tiles, wheres)


def check_vl_source(cfg: DataConfig, records: int = 8) -> None:
    """Preflight of an image-text source: the first `records` records parse and their images open
    (``data.on_error`` applies), and the placeholder tokens are single tokens of the tokenizer.

    Raises:
        DataError: as :func:`build_vl_dataset`, naming ``file:line`` or the ``data.vision`` field.
    """
    stats = SourceStats()
    found = sum(1 for _ in itertools.islice(_with_tiles(vl_records(cfg, stats), cfg, stats), records))
    if found == 0:
        raise DataError(f"data: no image-text documents among the first records ({stats.empty} empty, "
                        f"{stats.skipped} skipped{': ' + stats.examples[0] if stats.examples else ''})")
    image_token_ids(load_tokenizer(cfg.tokenizer), cfg)
