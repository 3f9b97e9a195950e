"""Read and write HF-style safetensors checkpoints: one ``model.safetensors`` or shards
``model-0000i-of-0000n.safetensors`` with ``model.safetensors.index.json`` (``{"metadata":
{"total_size": bytes}, "weight_map": {key: file}}``), as transformers' ``save_pretrained`` does.

Every file is written to a temporary name in the target folder and renamed into place
(``os.replace``), so a reader never sees a half-written file. Files get the usual mode of the
process umask (``0o644`` under umask 022), like any other file the user writes.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from xt.core.sizes import parse_size  # re-exported: the writers below and xt.models.hf_stream use it

__all__ = ["parse_size", "size_buckets", "CheckpointReader", "write_safetensors", "write_file", "write_index",
           "remove_stale", "shard_file_names", "atomic_write_text", "default_file_mode", "SINGLE", "INDEX"]

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "U8": torch.uint8, "I8": torch.int8,
           "I16": torch.int16, "I32": torch.int32, "I64": torch.int64, "BOOL": torch.bool}


def default_file_mode() -> int:
    """The mode a newly created file gets under the process umask (``0o644`` under umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class CheckpointReader:
    """Lazy reader of a folder's safetensors weights (single file or index + shards).

    Raises:
        FileNotFoundError: no ``model.safetensors`` nor index in ``path``.
        ValueError: an index that names a missing shard.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        index = self.path / INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.weight_map: dict[str, str] = dict(weight_map)
        elif (self.path / SINGLE).is_file():
            with safe_open(self.path / SINGLE, "pt") as f:
                self.weight_map = {k: SINGLE for k in f.keys()}
        else:
            raise FileNotFoundError(f"no {SINGLE} or {INDEX} in {self.path}")
        for fname in set(self.weight_map.values()):
            if not (self.path / fname).is_file():
                raise ValueError(f"{index}: shard {fname} is missing")
        self._handles: dict[str, Any] = {}
        self.bytes_read = 0  # tensor bytes read so far (get and get_rows)

    def keys(self) -> list[str]:
        """All tensor names."""
        return list(self.weight_map)

    def _handle(self, key: str):
        fname = self.weight_map[key]
        if fname not in self._handles:
            self._handles[fname] = safe_open(self.path / fname, "pt")
        return self._handles[fname]

    def get(self, key: str) -> torch.Tensor:
        """Load one tensor (CPU)."""
        t = self._handle(key).get_tensor(key)
        self.bytes_read += t.numel() * t.element_size()
        return t

    def shape(self, key: str) -> tuple[int, ...]:
        """The stored shape of one tensor (nothing read)."""
        return tuple(self._handle(key).get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        """The stored dtype of one tensor (nothing read).

        Raises:
            ValueError: a safetensors dtype torch has no equivalent for.
        """
        name = self._handle(key).get_slice(key).get_dtype()
        if name not in _DTYPES:
            raise ValueError(f"{self.path}: {key} has dtype {name}, which XT cannot read")
        return _DTYPES[name]

    def get_rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` of dim 0 of one tensor (CPU): only those bytes are read
        (safetensors ``get_slice``)."""
        t = self._handle(key).get_slice(key)[start:stop]
        self.bytes_read += t.numel() * t.element_size()
        return t

    def close(self) -> None:
        """Release the open files."""
        self._handles.clear()


def size_buckets(state: Mapping[str, torch.Tensor], max_bytes: int) -> Iterator[dict[str, torch.Tensor]]:
    """Consecutive groups of `state`'s entries (in order), each of at most `max_bytes` bytes of
    tensor data; a larger tensor is a group alone. The tensors are `state`'s own (no copy): the
    shards of `write_safetensors` and the weight buckets of `xt.rl.cluster.weights`."""
    cur: dict[str, torch.Tensor] = {}
    size = 0
    for key, t in state.items():
        n = t.numel() * t.element_size()
        if cur and size + n > max_bytes:
            yield cur
            cur, size = {}, 0
        cur[key] = t
        size += n
    if cur:
        yield cur


def shard_file_names(n: int) -> list[str]:
    """The weight file names of a save in `n` files (transformers' convention)."""
    return [SINGLE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def write_file(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write one safetensors file atomically (temporary name in the same folder, then ``os.replace``).
    Tensors that share storage (views of one stacked tensor) are copied first, as safetensors requires."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    seen: set[int] = set()
    out = {}
    for k, v in tensors.items():
        v = v.detach().to("cpu").contiguous()
        ptr = v.untyped_storage().data_ptr()
        whole = v.untyped_storage().nbytes() == v.numel() * v.element_size()
        out[k] = v if whole and ptr not in seen else v.clone()
        seen.add(ptr)
    save_file(out, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, default_file_mode())  # safetensors creates its files 0600: others could not read the export
    os.replace(tmp, path)


def write_index(out: Path, weight_map: dict[str, str], total_size: int) -> None:
    """``model.safetensors.index.json`` (atomic)."""
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    atomic_write_text(out / INDEX, json.dumps(index, indent=2, sort_keys=True) + "\n")


def remove_stale(out: Path, written: list[str]) -> None:
    """Remove weight files and the index of an earlier save in `out` that `written` does not name."""
    for p in out.iterdir():
        if p.name not in written and (p.name == SINGLE or p.name == INDEX
                                      or re.fullmatch(r"model-\d+-of-\d+\.safetensors", p.name)):
            p.unlink()


def write_safetensors(state: dict[str, torch.Tensor], path: str | Path, max_shard_size: int | str = "5GB") -> list[str]:
    """Write ``state`` to ``path`` (created if needed), sharded above ``max_shard_size``.

    Tied duplicates must be dropped first (each key is written as its own copy). Stale weight files of an earlier
    save in the same folder are removed after the new ones are in place.

    Returns:
        The names of the files written.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    shards = list(size_buckets(state, parse_size(max_shard_size)))
    names = shard_file_names(len(shards))
    for name, shard in zip(names, shards):
        write_file(shard, out / name)
    written = list(names)
    if len(shards) > 1:
        write_index(out, {k: name for name, shard in zip(names, shards) for k in shard},
                    sum(t.numel() * t.element_size() for t in state.values()))
        written.append(INDEX)
    remove_stale(out, written)
    return written
