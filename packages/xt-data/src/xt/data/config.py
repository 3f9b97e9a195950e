"""`DataConfig`: the ``[data]`` section of a training config (msgspec Struct, validated at load)."""
from __future__ import annotations

import codecs
from typing import Literal

import msgspec

from xt.data.corpora import CORPORA
from xt.data.errors import DataError


class DataConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where the training text comes from and how it is tokenized and packed.

    Attributes:
        source: a built-in corpus (``"shakespeare"``, ``"sotu"``, ``"brown"``, ``"chitchat"``) or
            ``"files"`` (then `paths` is required).
        paths: files or folders (recursive) for ``source="files"``.
        format: ``"auto"`` (``.jsonl`` files are JSONL, others plain text), ``"jsonl"`` or ``"text"``.
        mode: ``"pretrain"`` (``{"text"}`` records / text files; every token is a target),
            ``"chat"`` (``{"messages"}`` records; loss on assistant turns only) or ``"auto"``
            (per record, whichever field it has; ``chitchat`` is chat).
        encoding: text encoding of files (e.g. ``"latin-1"``); built-in corpora know their own.
        tokenizer: built-in name (``"qwen3"``, ``"llama3"``), local folder or hub id.
        eos_token: token appended to each pre-training document; None = the tokenizer's EOS.
        tokens_per_micro_batch: token budget T of one packed micro-batch (>= 2).
        max_seq_len: longest document (chunk) in tokens; longer documents are split. None = the
            budget.
        seed: shuffling seed (document chunks are reshuffled every epoch).
        shuffle: False keeps the source order (e.g. for evaluation).
        on_error: ``"raise"`` (bad record → `DataError` with file:line) or ``"skip"`` (count them).
        max_documents: read at most this many documents (quick runs, tests). None = all.
        cache: keep tokenized ids in ``$XT_CACHE/tokens`` keyed by tokenizer and source contents.
    """

    source: str = "shakespeare"
    paths: list[str] = []
    format: Literal["auto", "jsonl", "text"] = "auto"
    mode: Literal["auto", "pretrain", "chat"] = "auto"
    encoding: str = "utf-8"
    tokenizer: str = "qwen3"
    eos_token: str | None = None
    tokens_per_micro_batch: int = 4096
    max_seq_len: int | None = None
    seed: int = 0
    shuffle: bool = True
    on_error: Literal["raise", "skip"] = "raise"
    max_documents: int | None = None
    cache: bool = True

    def __post_init__(self) -> None:
        """Check values and combinations; raises `DataError` naming the field and what is allowed."""
        if self.source != "files" and self.source not in CORPORA:
            raise DataError(f"data.source: {self.source!r} is not allowed; use one of "
                            f"{sorted(CORPORA)} or 'files' (with data.paths)")
        if self.source == "files" and not self.paths:
            raise DataError("data.paths: source='files' needs at least one file or folder")
        if self.source != "files" and self.paths:
            raise DataError(f"data.paths: only used with source='files', not the built-in corpus "
                            f"{self.source!r}")
        if self.tokens_per_micro_batch < 2:
            raise DataError(f"data.tokens_per_micro_batch: must be >= 2, got {self.tokens_per_micro_batch}")
        if self.max_seq_len is not None and self.max_seq_len < 2:
            raise DataError(f"data.max_seq_len: must be >= 2 or unset, got {self.max_seq_len}")
        if self.max_documents is not None and self.max_documents < 1:
            raise DataError(f"data.max_documents: must be >= 1 or unset, got {self.max_documents}")
        if self.seed < 0:
            raise DataError(f"data.seed: must be >= 0, got {self.seed}")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise DataError(f"data.encoding: unknown encoding {self.encoding!r} "
                            f"(e.g. 'utf-8', 'latin-1')") from None
        if not self.tokenizer:
            raise DataError("data.tokenizer: must be a built-in name ('qwen3', 'llama3'), a folder or a hub id")

    @property
    def chunk_len(self) -> int:
        """Longest chunk in tokens: ``min(tokens_per_micro_batch, max_seq_len)``."""
        if self.max_seq_len is None:
            return self.tokens_per_micro_batch
        return min(self.tokens_per_micro_batch, self.max_seq_len)


def data_config_from_dict(raw: dict) -> DataConfig:
    """Build a `DataConfig` from a plain dict (e.g. a TOML ``[data]`` table).

    Raises:
        DataError: unknown keys, wrong types or bad values, with msgspec's path (``data.KEY``).
    """
    try:
        return msgspec.convert(raw, DataConfig)
    except msgspec.ValidationError as e:
        msg = str(e).replace("`$.", "`data.").replace("- at `$`", "in [data]")
        raise DataError(f"data config: {msg}") from None
