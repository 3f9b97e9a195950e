"""Reading raw records from JSONL and plain-text files and folders.

Record kinds:
- pre-training text: a JSONL line ``{"text": "..."}`` or a whole plain-text file;
- chat: a JSONL line ``{"messages": [{"role": "user", "content": "..."}, ...]}``.

Bad records (invalid JSON, a missing or mistyped field, undecodable bytes) raise `DataError`
naming ``file:line``; with ``on_error="skip"`` they are skipped and counted in `SourceStats`.
Empty files, blank lines and empty texts (whitespace only, no messages, no assistant turn) are
skipped and counted as ``empty``: they never crash and never become an empty document.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import msgspec

from xt.data.errors import DataError

ROLES = ("system", "user", "assistant", "tool")
_MAX_EXAMPLES = 10


@dataclass
class Record:
    """One raw document: exactly one of `text` / `messages` is set. `where` is ``file:line``."""

    where: str
    text: str | None = None
    messages: list[dict] | None = None


@dataclass
class SourceStats:
    """Counts of what reading skipped: `skipped` bad records (``on_error="skip"``), `empty` ones,
    and the first few skip reasons (``file:line: reason``) for the report."""

    skipped: int = 0
    empty: int = 0
    examples: list[str] = field(default_factory=list)

    def bad(self, on_error: str, where: str, reason: str) -> None:
        """Raise `DataError("where: reason")`, or count the record as skipped when on_error="skip"."""
        if on_error != "skip":
            raise DataError(f"{where}: {reason}")
        self.skipped += 1
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append(f"{where}: {reason}")


def expand_paths(paths: list[str]) -> list[Path]:
    """Files named by `paths`: files as given, folders recursively (sorted, hidden files skipped).

    Raises:
        DataError: a path that does not exist, or a folder without files.
    """
    out: list[Path] = []
    for p in paths:
        path = Path(p).expanduser()
        if path.is_file():
            out.append(path)
        elif path.is_dir():
            found = sorted(q for q in path.rglob("*") if q.is_file()
                           and not any(part.startswith(".") for part in q.relative_to(path).parts))
            if not found:
                raise DataError(f"data.paths: folder {p!r} contains no files")
            out.extend(found)
        else:
            raise DataError(f"data.paths: {p!r} does not exist")
    return out


def file_format(path: Path, fmt: str) -> str:
    """``"jsonl"`` or ``"text"``: `fmt` unless it is ``"auto"``, then by suffix (``.jsonl`` → jsonl,
    ``.json`` → `DataError`, anything else plain text)."""
    if fmt != "auto":
        return fmt
    if path.suffix.lower() == ".json":
        raise DataError(f"{path}: .json files are not read (one JSON document); write JSONL, one "
                        f"record per line, or set data.format to 'jsonl'/'text'")
    return "jsonl" if path.suffix.lower() == ".jsonl" else "text"


def check_messages(messages: object) -> str | None:
    """Return why `messages` is not a valid chat (list of {role, content: str}), or None if valid."""
    if not isinstance(messages, list):
        return f'"messages" must be a list, got {type(messages).__name__}'
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f'"messages"[{i}] must be an object, got {type(m).__name__}'
        if m.get("role") not in ROLES:
            return f'"messages"[{i}].role must be one of {list(ROLES)}, got {m.get("role")!r}'
        if not isinstance(m.get("content"), str):
            return f'"messages"[{i}].content must be a string, got {type(m.get("content")).__name__}'
    return None


def is_empty_chat(messages: list[dict]) -> bool:
    """True when a chat has nothing to learn: no assistant turn with non-blank content."""
    return not any(m["role"] == "assistant" and m["content"].strip() for m in messages)


def read_jsonl(path: Path, mode: str, encoding: str, on_error: str, stats: SourceStats) -> Iterator[Record]:
    """Yield the records of one JSONL file (one JSON object per line; blank lines ignored).

    `mode` ``"pretrain"`` requires ``"text"``, ``"chat"`` requires ``"messages"``, ``"auto"``
    accepts either. Raises `DataError` naming ``path:line`` (unless on_error="skip").
    """
    want = {"pretrain": ("text",), "chat": ("messages",), "auto": ("text", "messages")}[mode]
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            if not raw.strip():
                continue
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf") and encoding.lower().replace("-", "") == "utf8":
                raw = raw[3:]  # UTF-8 byte-order mark
            try:
                line = raw.decode(encoding)
                obj = msgspec.json.decode(line)
            except UnicodeDecodeError as e:
                stats.bad(on_error, where, f"cannot decode as {encoding}: {e.reason}")
                continue
            except msgspec.DecodeError as e:
                stats.bad(on_error, where, f"invalid JSON: {e}")
                continue
            if not isinstance(obj, dict):
                stats.bad(on_error, where, f"expected a JSON object, got {type(obj).__name__}")
                continue
            key = next((k for k in want if k in obj), None)
            if key is None:
                stats.bad(on_error, where, f"missing field {' or '.join(repr(k) for k in want)} "
                                           f"(mode={mode!r}; keys present: {sorted(obj)})")
                continue
            if key == "text":
                if not isinstance(obj["text"], str):
                    stats.bad(on_error, where, f'"text" must be a string, got {type(obj["text"]).__name__}')
                elif not obj["text"].strip():
                    stats.empty += 1
                else:
                    yield Record(where, text=obj["text"])
                continue
            reason = check_messages(obj["messages"])
            if reason is not None:
                stats.bad(on_error, where, reason)
            elif is_empty_chat(obj["messages"]):
                stats.empty += 1
            else:
                yield Record(where, messages=obj["messages"])


def decode_text(path: Path, data: bytes, encoding: str) -> str:
    """Decode `data` read from `path` with newlines normalised to ``\\n``.

    Raises:
        DataError: ``path:line: cannot decode as ENCODING`` at the first bad byte, or an unknown
        encoding name.
    """
    try:
        text = data.decode(encoding)
    except LookupError as e:
        raise DataError(f"data.encoding: unknown encoding {encoding!r}") from e
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: cannot decode as {encoding} ({e.reason} at byte {e.start}); "
                        f"set data.encoding (e.g. 'latin-1')") from e
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_text_file(path: Path, encoding: str, on_error: str, stats: SourceStats) -> Iterator[Record]:
    """Yield a whole plain-text file as one pre-training record (nothing if it is empty)."""
    try:
        text = decode_text(path, path.read_bytes(), encoding)
    except DataError as e:
        if on_error != "skip" or str(e).startswith("data.encoding"):
            raise
        where, _, reason = str(e).partition(": ")
        stats.bad(on_error, where, reason)
        return
    if text.strip():
        yield Record(f"{path}:1", text=text)
    else:
        stats.empty += 1


def read_files(paths: list[str], fmt: str, mode: str, encoding: str, on_error: str,
               stats: SourceStats) -> Iterator[Record]:
    """Yield records from files and folders (`expand_paths`), JSONL or plain text per `file_format`.

    Raises:
        DataError: missing paths, plain-text files in ``mode="chat"``, or bad records.
    """
    for path in expand_paths(paths):
        if file_format(path, fmt) == "jsonl":
            yield from read_jsonl(path, mode, encoding, on_error, stats)
        elif mode == "chat":
            raise DataError(f"{path}: plain-text files hold no chat messages (data.mode='chat'); "
                            f"use JSONL records {{\"messages\": [...]}} or data.format='jsonl'")
        else:
            yield from read_text_file(path, encoding, on_error, stats)

