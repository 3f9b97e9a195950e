"""`DataConfig`: the ``[data]`` section of a training config (msgspec Struct, validated at load)."""
from __future__ import annotations

import codecs
import math
from typing import Any, Literal

from xt.core.config import ConfigStruct, convert_config, require
from xt.data.corpora import CORPORA
from xt.data.image_corpora import IMAGE_CORPORA
from xt.data.vision_config import VisionDataConfig


def _check_source(source: str, paths: tuple[str, ...], allow_mix: bool) -> None:
    """`source` is a corpus, ``"files"`` with `paths`, or (where allowed) ``"mix"``; paths only with files.

    Raises:
        xt.core.config.ConfigFieldError: naming ``source`` or ``paths``.
    """
    names = "'files' (with paths) or 'mix' (with [[data.mix]])" if allow_mix else "'files' (with paths)"
    require(source == "files" or (allow_mix and source == "mix") or source in CORPORA or source in IMAGE_CORPORA,
            "source", f"must be one of {sorted(CORPORA)} or {names}, or an image-text corpus "
                      f"{sorted(IMAGE_CORPORA)} (with [data.vision]), got {source!r}")
    require(source != "files" or bool(paths), "paths", "must name at least one file or folder when source='files'")
    require(source == "files" or not paths, "paths",
            f"is only used with source='files', not with {source!r}")


class MixSource(ConfigStruct):
    """One source of a data mix (``[[data.mix]]``); tokenizer, format, budget and the rest come
    from ``[data]``.

    Attributes:
        source: a built-in corpus name or ``"files"`` (then `paths` is required).
        paths: files or folders for ``source = "files"``.
        weight: its share of the micro-batches, relative to the other sources' weights (> 0).
        max_documents: read at most this many of its documents; None = all.
        images: its records are image-text chat (read with ``[data.vision]``, micro-batches with
            ``pixel_values``); None = true for an image corpus (``digits_vqa``), false otherwise
            (a text source: its micro-batches have no tiles). True needs ``[data.vision]``.
    """

    source: str
    paths: tuple[str, ...] = ()
    weight: float = 1.0
    max_documents: int | None = None
    images: bool | None = None

    def __post_init__(self) -> None:
        _check_source(self.source, self.paths, allow_mix=False)
        require(isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight > 0,
                "weight", f"must be a number > 0, got {self.weight!r}")
        require(self.max_documents is None or self.max_documents >= 1, "max_documents",
                f"must be >= 1 or unset, got {self.max_documents}")
        require(self.images is not False or self.source not in IMAGE_CORPORA, "images",
                f"{self.source!r} is an image-text corpus; it cannot be read as text (images = false)")
        require(self.images is not True or self.source in IMAGE_CORPORA or self.source == "files", "images",
                f"{self.source!r} is a text corpus without images; images = true needs source = 'files' (JSONL)")

    @property
    def has_images(self) -> bool:
        """Whether the source is image-text (`images`, or by default: it is an image corpus)."""
        return self.source in IMAGE_CORPORA if self.images is None else self.images


class DataConfig(ConfigStruct):
    """Where the training text comes from and how it is tokenized and packed.

    Attributes:
        source: a built-in corpus (``"shakespeare"``, ``"sotu"``, ``"brown"``, ``"chitchat"``),
            ``"files"`` (then `paths` is required) or ``"mix"`` (then `mix` is required).
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
        cache: keep tokenized ids in ``$XT_CACHE/tokens`` keyed by tokenizer and source contents
            (text data; image-text data is re-tokenized at each start, which is fast).
        mix: with ``source = "mix"``, the sources (``[[data.mix]]`` tables, `MixSource`) and their
            weights; each micro-batch comes from one source, picked so that the shares follow the
            weights (`xt.data.mixing`).
        vision: ``[data.vision]`` (`xt.data.vision_config.VisionDataConfig`): image-text chat
            records (JSONL files, or the image corpus ``digits_vqa``), tiled and expanded into
            placeholder tokens; micro-batches then carry ``pixel_values``. With ``source = "mix"``
            it applies to the image-text sources (`MixSource.images`); text sources' micro-batches
            carry no tiles. Unset = text only.
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
    mix: tuple[MixSource, ...] = ()
    vision: VisionDataConfig | None = None

    def __post_init__(self) -> None:
        """Check values and combinations.

        Raises:
            xt.core.config.ConfigFieldError: naming the field and what is allowed (`load_config`
            reports it as ``data.FIELD`` with file and line).
        """
        _check_source(self.source, self.paths, allow_mix=True)
        require(self.source == "mix" or not self.mix, "mix", "is only used with source = 'mix'")
        require(self.source != "mix" or len(self.mix) >= 2, "mix",
                "must list at least two [[data.mix]] sources when source = 'mix'")
        require(self.source != "mix" or self.max_documents is None, "max_documents",
                "is set per source in [[data.mix]] when source = 'mix'")
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
        require(self.source not in IMAGE_CORPORA or self.vision is not None, "source",
                f"{self.source!r} is an image-text corpus: add a [data.vision] table")
        require(self.vision is not None or not any(m.has_images for m in self.mix), "mix",
                "holds an image-text source (an image corpus or images = true): add a [data.vision] table")
        if self.vision is not None:
            require(self.source in ("files", "mix") or self.source in IMAGE_CORPORA, "source",
                    f"with [data.vision] must be 'files' (JSONL), an image corpus {sorted(IMAGE_CORPORA)} or 'mix' "
                    f"(image-text and text sources), got {self.source!r}")
            require(self.source != "mix" or any(m.has_images for m in self.mix), "mix",
                    "has no image-text source (an image corpus, or files with images = true) for [data.vision]")
            require(self.mode in ("auto", "chat"), "mode", f"must be 'chat' or 'auto' with [data.vision], "
                                                           f"got {self.mode!r}")
            require(self.format in ("auto", "jsonl"), "format", f"must be 'jsonl' or 'auto' with [data.vision], "
                                                               f"got {self.format!r}")
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
