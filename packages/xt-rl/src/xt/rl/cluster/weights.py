"""Weight hand-over from the trainer actor to rollout actors, in size-bounded buckets.

The trainer cuts its model's state dict into buckets of at most ``max_bytes`` (`weight_buckets`,
the one seam: a `(name, tensor)` iterator of another origin, e.g. one yielding HF names for a
foreign rollout engine, replaces it without touching the transports) and publishes them:

- ``"object_store"``: each bucket a Ray object (`ray.put`, in memory; zero-copy reads on the node);
- ``"disk"``: each bucket a safetensors file under ``root/v{version}/`` (written to a temporary
  name, then renamed), for rollout actors that share a file system but not the object store.

A rollout actor receives the handle (a list of object refs, or of paths), reads one bucket at a
time and copies it into its model (`load_buckets`); every tensor of its state dict must arrive.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xt.models.common.safetensors_io import size_buckets

__all__ = ["weight_buckets", "publish_weights", "load_buckets", "WeightHandle"]

#: what `publish_weights` returns: ``("object_store", [ObjectRef, ...])`` or ``("disk", [path, ...])``
WeightHandle = tuple[str, list[Any]]


def weight_buckets(state: Mapping[str, torch.Tensor], max_bytes: int) -> Iterator[dict[str, torch.Tensor]]:
    """Consecutive buckets of `state` (in its order), each of at most `max_bytes` bytes of tensor
    data (`xt.models.common.safetensors_io.size_buckets`); a tensor larger than `max_bytes` is a
    bucket alone. The tensors are detached contiguous CPU copies.

    Raises:
        ValueError: ``max_bytes < 1``.
    """
    if max_bytes < 1:
        raise ValueError(f"weight_buckets: max_bytes must be >= 1, got {max_bytes}")
    for bucket in size_buckets(state, max_bytes):
        yield {k: t.detach().to("cpu", copy=True).contiguous() for k, t in bucket.items()}


def publish_weights(model: nn.Module, version: int, how: str, max_bytes: int, root: Path | None = None) -> WeightHandle:
    """Publish the model's weights of `version` as buckets (module docstring).

    Args:
        model: the trainer's model (its ``state_dict()``).
        version: the weight version (names the disk folder).
        how: "object_store" or "disk".
        max_bytes: the bucket bound.
        root: the disk folder (``how = "disk"``); versions older than the previous one are removed.

    Raises:
        ValueError: an unknown `how`, or ``"disk"`` without `root`.
    """
    buckets = weight_buckets(model.state_dict(), max_bytes)
    if how == "object_store":
        import ray
        return how, [ray.put(b) for b in buckets]
    if how != "disk" or root is None:
        raise ValueError(f"publish_weights: how must be 'object_store' or 'disk' (with a root), got {how!r}")
    from safetensors.torch import save_file
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    kept = sorted((int(d.name[1:]) for d in root.glob("v*") if d.name[1:].isdigit() and int(d.name[1:]) < version))
    for old in kept[:-1]:  # the previous version stays: a rollout submitted on it may have to be redone
        shutil.rmtree(root / f"v{old}", ignore_errors=True)
    folder = root / f"v{version}"
    folder.mkdir(exist_ok=True)
    paths = []
    for i, b in enumerate(buckets):
        final = folder / f"bucket-{i:05d}.safetensors"
        tmp = final.with_suffix(".tmp")
        save_file(b, str(tmp))
        os.replace(tmp, final)
        paths.append(str(final))
    return how, paths


def _read(handle: WeightHandle) -> Iterable[Mapping[str, torch.Tensor]]:
    how, items = handle
    if how == "object_store":
        import ray
        return (ray.get(ref) for ref in items)
    from safetensors.torch import load_file
    return (load_file(p) for p in items)


def load_buckets(model: nn.Module, handle: WeightHandle) -> int:
    """Copy the published buckets into `model`, one bucket in memory at a time; returns the bytes read.

    Raises:
        KeyError: a bucket holds a name the model does not have, or a model tensor never arrived.
        RuntimeError: a shape that differs (from ``copy_``).
    """
    own = model.state_dict()
    seen: set[str] = set()
    nbytes = 0
    with torch.no_grad():
        for bucket in _read(handle):
            for name, t in bucket.items():
                if name not in own:
                    raise KeyError(f"weight sync: the trainer sent {name!r}, which the rollout model lacks")
                own[name].copy_(t)
                seen.add(name)
                nbytes += t.numel() * t.element_size()
    missing = sorted(set(own) - seen)
    if missing:
        raise KeyError(f"weight sync: {len(missing)} rollout tensors did not arrive, e.g. {missing[:3]}")
    return nbytes
