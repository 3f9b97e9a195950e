"""Reading and tokenizing a whole source once, with an on-disk cache of the token ids.

`build_dataset` turns a `DataConfig` into a `TokenizedDataset`: all documents' token ids end to
end (``tokens [N]`` int32), document offsets and, for chat data, the loss mask. Pre-training
documents are ``tokenizer(text)`` ids plus the EOS token; chat documents are the chat-template
ids with the assistant mask (`xt.data.chat`). The result is saved in
``$XT_CACHE/tokens/<key>.pt`` where the key hashes the tokenizer files, the source contents and
every option that changes the ids, so a second start loads in milliseconds.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from xt.data.assets import cache_dir
from xt.data.chat import encode_chats
from xt.data.config import DataConfig
from xt.data.corpora import corpus_digest, read_corpus
from xt.data.errors import DataError
from xt.data.sources import Record, SourceStats, expand_paths, read_files
from xt.data.tokenizer import load_tokenizer, tokenizer_fingerprint

FORMAT_VERSION = 1
_BATCH_RECORDS = 256


@dataclass
class TokenizedDataset:
    """All documents of a source, tokenized.

    Attributes:
        tokens: ``[N]`` int32, documents end to end.
        doc_offsets: ``[D+1]`` int64, document d is ``tokens[doc_offsets[d]:doc_offsets[d+1]]``.
        loss_mask: ``[N]`` bool (token i is a training target) or None when every token is
            (pre-training).
        skipped: bad records skipped (``on_error="skip"``); empty: empty records/files skipped.
        skipped_examples: the first few ``file:line: reason`` of skipped records.
        key: the cache key (hex), also identifying the data in loader states.
    """

    tokens: torch.Tensor
    doc_offsets: torch.Tensor
    loss_mask: torch.Tensor | None
    skipped: int = 0
    empty: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    key: str = ""

    @property
    def num_documents(self) -> int:
        """Number of documents D."""
        return len(self.doc_offsets) - 1

    @property
    def num_tokens(self) -> int:
        """Number of tokens N over all documents."""
        return len(self.tokens)


def _records(cfg: DataConfig, stats: SourceStats) -> Iterator[Record]:
    if cfg.source == "files":
        it = read_files(cfg.paths, cfg.format, cfg.mode, cfg.encoding, cfg.on_error, stats)
    else:
        it = read_corpus(cfg.source, cfg.mode, cfg.on_error, stats)
    return itertools.islice(it, cfg.max_documents) if cfg.max_documents else it


def dataset_key(cfg: DataConfig) -> str:
    """Cache key: hash of the tokenizer, the source contents and the options that change ids."""
    h = hashlib.sha256()
    opts = (FORMAT_VERSION, cfg.source, cfg.format, cfg.mode, cfg.encoding, cfg.eos_token,
            cfg.on_error, cfg.max_documents)
    h.update(repr(opts).encode())
    h.update(tokenizer_fingerprint(cfg.tokenizer).encode())
    if cfg.source == "files":
        for path in expand_paths(cfg.paths):
            h.update(str(path.resolve()).encode() + b"\0")
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    else:
        h.update(corpus_digest(cfg.source).encode())
    return h.hexdigest()[:32]


def _encode(cfg: DataConfig, tokenizer, records: list[Record]) -> list[tuple[list[int], torch.Tensor | None]]:
    out: list = [None] * len(records)
    texts = [(i, r) for i, r in enumerate(records) if r.text is not None]
    chats = [(i, r) for i, r in enumerate(records) if r.messages is not None]
    if texts:
        eos = cfg.eos_token if cfg.eos_token is not None else tokenizer.eos_token
        eos_id = tokenizer.convert_tokens_to_ids(eos) if eos is not None else None
        if eos_id is None or (tokenizer.unk_token_id is not None and eos_id == tokenizer.unk_token_id):
            raise DataError(f"data.eos_token: {eos!r} is not a token of tokenizer {cfg.tokenizer!r}")
        ids = tokenizer([r.text for _, r in texts])["input_ids"]
        for (i, _), doc in zip(texts, ids):
            out[i] = (list(doc) + ([eos_id] if not doc or doc[-1] != eos_id else []), None)
    if chats:
        enc = encode_chats(tokenizer, [r.messages for _, r in chats], [r.where for _, r in chats])
        for (i, _), doc in zip(chats, enc):
            out[i] = doc
    return out


def tokenize_source(cfg: DataConfig, tokenizer=None) -> TokenizedDataset:
    """Read and tokenize the source of `cfg` (no cache). `tokenizer` defaults to `cfg.tokenizer`.

    Raises:
        DataError: bad records (``file:line``), no documents at all, or tokenizer problems.
    """
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer)
    stats = SourceStats()
    pieces, masks, lengths, any_mask = [], [], [], False
    records = _records(cfg, stats)
    while batch := list(itertools.islice(records, _BATCH_RECORDS)):
        for ids, mask in _encode(cfg, tokenizer, batch):
            pieces.append(torch.tensor(ids, dtype=torch.int32))
            masks.append(mask)
            lengths.append(len(ids))
            any_mask = any_mask or mask is not None
    if not pieces:
        where = cfg.source if cfg.source != "files" else ", ".join(cfg.paths)
        raise DataError(f"data: no documents in {where} ({stats.empty} empty, {stats.skipped} skipped"
                        f"{': ' + stats.examples[0] if stats.examples else ''})")
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0)
    loss_mask = None
    if any_mask:
        loss_mask = torch.cat([m if m is not None else torch.ones(len(p), dtype=torch.bool)
                               for p, m in zip(pieces, masks)])
    return TokenizedDataset(torch.cat(pieces), offsets, loss_mask, stats.skipped, stats.empty,
                            list(stats.examples))


def build_dataset(cfg: DataConfig, tokenizer=None) -> TokenizedDataset:
    """`tokenize_source` with the on-disk cache (``cfg.cache``): load ``$XT_CACHE/tokens/KEY.pt``
    if present, else tokenize and save it atomically (temp file + rename)."""
    key = dataset_key(cfg)
    path = cache_dir() / "tokens" / f"{key}.pt"
    if cfg.cache and path.is_file():
        try:
            d = torch.load(path, weights_only=True)
            return TokenizedDataset(d["tokens"], d["doc_offsets"], d["loss_mask"], d["skipped"],
                                    d["empty"], list(d["skipped_examples"]), key)
        except Exception:  # a damaged cache file is rebuilt, never trusted
            pass
    ds = tokenize_source(cfg, tokenizer)
    ds.key = key
    if cfg.cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
        os.close(fd)
        try:
            torch.save({"tokens": ds.tokens, "doc_offsets": ds.doc_offsets, "loss_mask": ds.loss_mask,
                        "skipped": ds.skipped, "empty": ds.empty,
                        "skipped_examples": ds.skipped_examples}, tmp)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return ds
