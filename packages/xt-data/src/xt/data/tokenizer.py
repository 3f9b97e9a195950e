"""Loading a real tokenizer by built-in name, local folder or hub id.

Built-in names map to pinned registry assets (`xt.data.assets`): ``"qwen3"`` (Qwen3 tokenizer and
chat template, 151,669 tokens) and ``"llama3"``. A local folder with ``tokenizer.json`` /
``tokenizer_config.json`` and any other string go to ``transformers.AutoTokenizer``, so users with
a hub use hub ids the same way.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from xt.data.assets import asset_path
from xt.data.errors import DataError

BUILTIN_TOKENIZERS = {"qwen3": "qwen3-tokenizer", "llama3": "llama3-tokenizer"}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja")


def resolve_tokenizer(name_or_path: str) -> str:
    """Map a built-in name to its cached asset folder (fetching it); return other strings unchanged."""
    if name_or_path in BUILTIN_TOKENIZERS:
        return str(asset_path(BUILTIN_TOKENIZERS[name_or_path]))
    return name_or_path


_OFF = ("", "0", "false", "no", "off")


def _offline() -> bool:
    """True when the environment says the hub must not be used (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return any(os.environ.get(v, "").strip().lower() not in _OFF for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_reachable(timeout_s: float = 3.0) -> str | None:
    """None when the hub's host (``$HF_ENDPOINT``, default huggingface.co) accepts a connection
    within `timeout_s`; otherwise why not."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        return f"cannot reach the hub at {host}:{port} ({e.strerror or type(e).__name__})"
    return None


def _unknown(name: str, why: str) -> DataError:
    return DataError(f"data.tokenizer: {name!r} is not a built-in name ({', '.join(sorted(BUILTIN_TOKENIZERS))}) "
                     f"nor a local folder, and {why}. Use a built-in name, a folder with tokenizer.json, "
                     "or a hub id of the form 'org/name' with network access")


@functools.lru_cache(maxsize=8)
def load_tokenizer(name_or_path: str):
    """Load a tokenizer: ``"qwen3"``/``"llama3"`` (cached registry asset), a local folder, or a hub id.

    Returns a `transformers.PreTrainedTokenizerBase` (a fast tokenizer for the built-ins; its
    ``chat_template`` is the model's own). Cached per name within the process. A hub id is first
    looked up in the local hub cache; only when it is not there is the hub asked, and then only if
    it is an ``org/name`` id, the environment allows the hub (no ``HF_HUB_OFFLINE`` /
    ``TRANSFORMERS_OFFLINE``) and its host answers within 3 s. So a mistyped name fails at once,
    offline, listing the built-in names.

    Raises:
        DataError: a path that does not exist, a name that is neither built-in, local, cached nor
        fetchable (the built-in names listed), or a tokenizer that transformers cannot load
        (the message names `name_or_path`).
    """
    from transformers import AutoTokenizer

    target = resolve_tokenizer(name_or_path)
    looks_local = target.startswith((".", "/", "~")) or Path(target).expanduser().exists()
    if looks_local and not Path(target).expanduser().is_dir():
        raise DataError(f"tokenizer: {name_or_path!r} is not a folder (expected a folder with "
                        f"tokenizer.json, a built-in name {sorted(BUILTIN_TOKENIZERS)} or a hub id)")
    if looks_local:
        target = str(Path(target).expanduser())
    else:
        try:
            return AutoTokenizer.from_pretrained(target, local_files_only=True)
        except Exception:  # not in the hub cache: decide below whether asking the hub can work
            pass
        if "/" not in target:
            raise _unknown(name_or_path, "it is not in the local hub cache (a hub id has the form 'org/name')")
        if _offline():
            raise _unknown(name_or_path, "the hub is switched off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) "
                           "and it is not in the local hub cache")
        why = _hub_reachable()
        if why is not None:
            raise _unknown(name_or_path, f"{why}; it is not in the local hub cache")
    try:
        return AutoTokenizer.from_pretrained(target)
    except Exception as e:  # transformers raises OSError/ValueError/HF errors: name the input
        raise DataError(f"tokenizer: cannot load {name_or_path!r}: {type(e).__name__}: {e}") from e


def save_tokenizer(name_or_path: str, folder: str | Path) -> list[str]:
    """Write the tokenizer `name_or_path` (as `load_tokenizer` takes it) into `folder` the way
    transformers' ``save_pretrained`` does: ``tokenizer.json``, ``tokenizer_config.json`` and the
    chat template (``chat_template.jinja``), so ``AutoTokenizer.from_pretrained(folder)`` works
    offline on that folder alone. Each file is written under a temporary folder inside `folder`
    and renamed into place.

    Returns:
        The file names written.

    Raises:
        DataError: as `load_tokenizer`.
    """
    import shutil
    import tempfile

    tok = load_tokenizer(name_or_path)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".tokenizer-"))
    try:
        tok.save_pretrained(str(tmp))
        names = sorted(p.name for p in tmp.iterdir() if p.is_file())
        for name in names:
            os.replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return names


def tokenizer_fingerprint(name_or_path: str) -> str:
    """A hex digest that changes when the tokenizer changes (hash of its files for local folders
    and built-ins; of the loaded vocabulary and chat template for hub ids). Used as a cache key."""
    target = Path(resolve_tokenizer(name_or_path)).expanduser()
    h = hashlib.sha256()
    if target.is_dir():
        for fname in _TOKENIZER_FILES:
            if (target / fname).is_file():
                h.update(fname.encode() + b"\0" + (target / fname).read_bytes())
        return h.hexdigest()
    tok = load_tokenizer(name_or_path)
    h.update(name_or_path.encode())
    backend = getattr(tok, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else repr(sorted(tok.get_vocab().items())).encode())
    h.update(str(getattr(tok, "chat_template", "")).encode())
    return h.hexdigest()
