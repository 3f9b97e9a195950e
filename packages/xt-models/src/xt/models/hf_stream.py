"""Stream a model's weights in HF names: buckets for weight sync, and a save in which no rank holds the model.

Both take the model's full state as an iterable of ``(xt_name, full tensor)`` with a ``layout``
attribute ``[(xt_name, shape, dtype)]`` known before anything is read: a plain model's state dict
(the default, :class:`PlainState`) or, for a model laid out by xt.parallel,
``xt.parallel.full_state.FullState(model, ep_group)``, which gathers one tensor at a time (every rank
must then iterate, in step). Each tensor is mapped to HF names on its own by the family's ``to_hf``
(a per-key mapping: experts unstacked, tied heads dropped, DeepSeek-V3's MTP copies of the
embedding and head), so at most one full XT tensor and its HF pieces are alive at a time.

* :func:`iter_hf_buckets`: ``[(hf_name, tensor)]`` lists of at most `bucket_bytes` (a tensor larger
  than that comes alone), e.g. for RL weight sync to a rollout engine;
* :func:`save_streamed`: the HF folder. The files are planned from the layout (meta tensors through
  ``to_hf``), file i is written by rank ``i % world`` (atomically), so a rank keeps only the
  tensors of its own current file; rank 0 writes the index and configs after a barrier.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from xt.models.common.safetensors_io import (INDEX, atomic_write_text, parse_size, remove_stale, shard_file_names,
                                             write_file, write_index)
from xt.models.registry import get_spec

__all__ = ["PlainState", "hf_items", "hf_layout", "iter_hf_buckets", "save_streamed", "write_configs"]


class PlainState:
    """A plain (not laid-out) model's state dict as a streamed state: ``layout`` and ``(name, tensor)``
    pairs (tied parameters under each name, persistent buffers), nothing copied."""

    def __init__(self, model: nn.Module) -> None:
        self._sd = model.state_dict()
        self.layout = [(k, tuple(v.shape), v.dtype) for k, v in self._sd.items()]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self._sd.items())


def _to_hf(model: nn.Module) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_hf_dict"):
        raise ValueError(f"{type(model).__name__} has no typed config with to_hf_dict(); cannot map to HF names")
    spec = get_spec(config.to_hf_dict())
    return lambda part: spec.to_hf(part, config)


def hf_items(model: nn.Module, tensors: Iterable[tuple[str, torch.Tensor]] | None = None
             ) -> Iterator[tuple[str, torch.Tensor]]:
    """``(hf_name, tensor)`` for `model`'s state (default :class:`PlainState`), one XT tensor at a time.

    Raises:
        ValueError: the model has no typed config with ``to_hf_dict()``.
    """
    to_hf = _to_hf(model)
    for name, t in (PlainState(model) if tensors is None else tensors):
        yield from to_hf({name: t}).items()


def hf_layout(model: nn.Module, layout: list[tuple[str, tuple[int, ...], torch.dtype]]
              ) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """The HF ``(name, shape, dtype)`` list, in stream order, of a state `layout` (``to_hf`` on meta tensors)."""
    return [(k, tuple(v.shape), v.dtype)
            for k, v in hf_items(model, ((n, torch.empty(s, dtype=d, device="meta")) for n, s, d in layout))]


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    n = dtype.itemsize
    for s in shape:
        n *= s
    return n


def iter_hf_buckets(model: nn.Module, bucket_bytes: int | str,
                    tensors: Iterable[tuple[str, torch.Tensor]] | None = None) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """`model`'s weights in HF names, in buckets of at most `bucket_bytes` (bytes or ``"512MiB"``);
    a single tensor larger than that makes a bucket of its own. Tensors may be views of the model's
    (plain state) or of one gathered tensor; copy what you keep.

    Args:
        model: an XT model (its config gives the HF mapping).
        bucket_bytes: the bucket budget.
        tensors: the state to stream (module docstring); default the plain model's state dict. For
            a model laid out by xt.parallel pass ``xt.parallel.full_state.FullState(model, ep_group)``
            and iterate on every rank.

    Returns:
        An iterator of buckets, each a non-empty ``[(hf_name, tensor)]``, in checkpoint order.

    Raises:
        ValueError: a bad `bucket_bytes` (named) or a model without a typed config.
    """
    budget = parse_size(bucket_bytes, "bucket_bytes")
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, t in hf_items(model, tensors):
        n = t.numel() * t.element_size()
        if bucket and size + n > budget:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t))
        size += n
    if bucket:
        yield bucket


def _plan(items: list[tuple[str, tuple[int, ...], torch.dtype]], budget: int) -> list[list[str]]:
    files: list[list[str]] = [[]]
    size = 0
    for name, shape, dtype in items:
        n = _nbytes(shape, dtype)
        if files[-1] and size + n > budget:
            files.append([])
            size = 0
        files[-1].append(name)
        size += n
    return files


def _own(t: torch.Tensor) -> torch.Tensor:
    """`t` on the CPU, contiguous, with storage of its own (a slice of a larger tensor is copied, so
    the larger one can be freed)."""
    t = t.detach().to("cpu").contiguous()
    return t if t.untyped_storage().nbytes() == t.numel() * t.element_size() else t.clone()


def save_streamed(model: nn.Module, path: Path, tensors, *, max_shard_size: int | str = "5GB", rank: int = 0,
                  world: int = 1, barrier: Callable[[], None] | None = None) -> tuple[list[str], torch.dtype]:
    """Write `model`'s weights (HF names) into folder `path` from the streamed state `tensors`.

    Every rank of a laid-out model calls it with its `rank`, the `world` size and the run's
    `barrier` (every rank iterates `tensors`); file i goes to rank ``i % world``. A rank holds the
    tensor being streamed plus the tensors of its own file being filled (at most `max_shard_size`,
    or one tensor when that is larger). Each file is written atomically; rank 0 then writes the
    index (several files) and removes weight files of an earlier save.

    Returns:
        ``(file names, dtype)``: the weight files and index of the folder (on every rank) and the
        dtype of the first floating tensor (for ``config.json``).
    """
    items = hf_layout(model, tensors.layout)
    files = _plan(items, parse_size(max_shard_size))
    names = shard_file_names(len(files))
    file_of = {k: i for i, ks in enumerate(files) for k in ks}
    left = [len(ks) for ks in files]
    path.mkdir(parents=True, exist_ok=True)
    buf: dict[str, torch.Tensor] = {}
    for name, t in hf_items(model, tensors):
        i = file_of[name]
        left[i] -= 1
        if i % world != rank:
            continue
        buf[name] = _own(t)
        if left[i] == 0:
            write_file(buf, path / names[i])
            buf = {}
    if barrier is not None:
        barrier()
    written = list(names) + ([INDEX] if len(files) > 1 else [])
    if rank == 0:
        if len(files) > 1:
            write_index(path, {k: names[i] for k, i in file_of.items()}, sum(_nbytes(s, d) for _, s, d in items))
        remove_stale(path, written)
    dtype = next(d for _, _, d in items if d.is_floating_point)
    return written, dtype


def write_configs(model: nn.Module, path: Path, dtype: torch.dtype, generation: Callable[[dict], dict]) -> list[str]:
    """``config.json`` (with ``dtype``) and ``generation_config.json`` (``generation(hf)``), atomic."""
    hf = model.config.to_hf_dict()
    hf["dtype"] = str(dtype).removeprefix("torch.")
    atomic_write_text(path / "config.json", json.dumps(hf, indent=2, sort_keys=True) + "\n")
    atomic_write_text(path / "generation_config.json", json.dumps(generation(hf), indent=2, sort_keys=True) + "\n")
    return ["config.json", "generation_config.json"]
