"""Reading image-text chat records from JSONL.

Two record forms, one per line:

- ``{"messages": [{"role", "content": str}, ...], "images": ["a.png", ...]}``: each image's place
  is a placeholder (``data.vision.placeholder``, ``<image>``) in the content; when no message holds
  a placeholder, the images go before the first user message's text, in order;
- OpenAI-style content lists: ``"content": [{"type": "text", "text": ...}, {"type": "image_url",
  "image_url": {"url": "a.png"}}, {"type": "image", "image": "a.png"}, ...]``.

Image references are local files: absolute, ``file://`` URLs, or relative to the JSONL's folder.
A bad record (invalid JSON, wrong fields, placeholder count not equal to the images, a remote
URL) raises `DataError` naming ``file:line`` or is skipped and counted (``on_error = "skip"``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import msgspec

from xt.data.sources import SourceStats, check_messages, is_empty_chat

__all__ = ["VLRecord", "normalise_record", "read_vl_jsonl"]


@dataclass
class VLRecord:
    """One image-text conversation: string contents with one `placeholder` per image, the image
    files in placeholder order, and ``file:line``."""

    where: str
    messages: list[dict]
    images: list[Path] = field(default_factory=list)


def _image_ref(part: dict) -> object:
    if part.get("type") == "image_url":
        ref = part.get("image_url")
        return ref.get("url") if isinstance(ref, dict) else ref
    return next((part[k] for k in ("image", "path", "url") if k in part), None)


def _resolve(ref: object, base: Path) -> Path:
    if not isinstance(ref, str) or not ref:
        raise ValueError(f"an image reference must be a non-empty string, got {ref!r}")
    if ref.startswith(("http://", "https://", "data:")):
        raise ValueError(f"image {ref[:60]!r}: only local files are read (no network); download it first")
    p = Path(ref.removeprefix("file://")).expanduser()
    return p if p.is_absolute() else base / p


def _flatten(messages: list, placeholder: str, base: Path) -> tuple[list[dict], list[Path]]:
    """OpenAI-style content lists -> string contents with placeholders, and their images in order."""
    out, images = [], []
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if not isinstance(content, list):
            out.append(m)
            continue
        text = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                text.append(part["text"])
            elif kind in ("image", "image_url"):
                images.append(_resolve(_image_ref(part), base))
                text.append(placeholder)
            else:
                raise ValueError(f'"messages"[{i}].content[{j}] must be {{"type": "text", "text": ...}} or an '
                                 f'image part ("image" / "image_url"), got {part!r:.80}')
        out.append({**m, "content": "\n".join(text) if any(t == placeholder for t in text) else "".join(text)})
    return out, images


def normalise_record(obj: dict, placeholder: str, base: Path) -> VLRecord | str:
    """One decoded JSONL object -> a `VLRecord` (``where`` left empty), or why it is invalid."""
    messages = obj.get("messages")
    if not isinstance(messages, list):
        return f'missing or invalid "messages" (a list of turns), got {type(messages).__name__}'
    try:
        messages, listed = _flatten(messages, placeholder, base)
        given = obj.get("images", [])
        if not isinstance(given, list):
            return f'"images" must be a list of file names, got {type(given).__name__}'
        if listed and given:
            return '"images" and image parts in "content" cannot both be given'
        images = listed or [_resolve(r, base) for r in given]
    except ValueError as e:
        return str(e)
    reason = check_messages(messages)
    if reason is not None:
        return reason
    count = sum(m["content"].count(placeholder) for m in messages)
    if count == 0 and images:
        first = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
        if first is None:
            return 'images given but no "user" message to put them in'
        m = messages[first]
        messages[first] = {**m, "content": "\n".join([placeholder] * len(images) + [m["content"]])}
    elif count != len(images):
        return f"{count} {placeholder!r} placeholders in the messages but {len(images)} images"
    return VLRecord("", messages, images)


def read_vl_jsonl(path: Path, placeholder: str, on_error: str, stats: SourceStats,
                  encoding: str = "utf-8") -> Iterator[VLRecord]:
    """Yield the image-text records of one JSONL file (blank lines ignored; a conversation without
    an assistant turn is counted as empty).

    Raises:
        DataError: ``path:line: reason`` for a bad record (unless ``on_error = "skip"``).
    """
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            if not raw.strip():
                continue
            try:
                obj = msgspec.json.decode(raw.decode(encoding).lstrip("\ufeff"))
            except (UnicodeDecodeError, msgspec.DecodeError) as e:
                stats.bad(on_error, where, f"invalid JSON: {e}")
                continue
            rec = normalise_record(obj, placeholder, path.parent) if isinstance(obj, dict) else \
                f"expected a JSON object, got {type(obj).__name__}"
            if isinstance(rec, str):
                stats.bad(on_error, where, rec)
            elif is_empty_chat(rec.messages):
                stats.empty += 1
            else:
                rec.where = where
                yield rec
