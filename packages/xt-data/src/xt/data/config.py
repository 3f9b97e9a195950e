"""`DataConfig`: the ``[data]`` section of a training config (msgspec Struct, validated at load)."""
from __future__ import annotations

import codecs
from typing import Any, Literal

from xt.core.config import ConfigStruct, convert_config, require
from xt.data.corpora import CORPORA


class DataConfig(ConfigStruct):
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
    paths: tuple[str, ...] = ()
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
        """Check values and combinations.

        Raises:
            xt.core.config.ConfigFieldError: naming the field and what is allowed (`load_config`
            reports it as ``data.FIELD`` with file and line).
        """
        require(self.source == "files" or self.source in CORPORA, "source",
                f"must be one of {sorted(CORPORA)} or 'files' (with paths), got {self.source!r}")
        require(self.source != "files" or bool(self.paths), "paths",
                "must name at least one file or folder when source='files'")
        require(self.source == "files" or not self.paths, "paths",
                f"is only used with source='files', not with the built-in corpus {self.source!r}")
        require(self.tokens_per_micro_batch >= 2, "tokens_per_micro_batch",
                f"must be >= 2, got {self.tokens_per_micro_batch}")
        require(self.max_seq_len is None or self.max_seq_len >= 2, "max_seq_len",
                f"must be >= 2 or unset, got {self.max_seq_len}")
        require(self.max_documents is None or self.max_documents >= 1, "max_documents",
                f"must be >= 1 or unset, got {self.max_documents}")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            require(False, "encoding", f"must be a Python codec name such as 'utf-8' or 'latin-1', "
                                       f"got {self.encoding!r}")
        require(bool(self.tokenizer), "tokenizer",
                "must be a built-in name ('qwen3', 'llama3'), a folder or a hub id")

    @property
    def chunk_len(self) -> int:
        """Longest chunk in tokens: ``min(tokens_per_micro_batch, max_seq_len)``."""
        if self.max_seq_len is None:
            return self.tokens_per_micro_batch
        return min(self.tokens_per_micro_batch, self.max_seq_len)


class _DataSection(ConfigStruct):
    data: DataConfig


def data_config_from_dict(raw: dict[str, Any]) -> DataConfig:
    """Build a `DataConfig` from a plain dict (e.g. a TOML ``[data]`` table), strictly.

    Raises:
        xt.core.config.ConfigError: unknown keys, wrong types or bad values, naming the key as
        ``data.KEY`` and what is allowed.
    """
    return convert_config({"data": dict(raw)}, _DataSection).data
