"""Weight hand-over from the trainer actor to rollout actors, in size-bounded buckets of HF-named tensors.

The trainer streams its weights in HF names (`xt.models.iter_hf_buckets`: the family's ``to_hf``,
one XT tensor at a time; for a model laid out by xt.parallel over `xt.parallel.full_state.FullState`,
which gathers FSDP2 shards and EP slices one tensor at a time on every trainer rank) and publishes
the buckets:

- ``"object_store"``: each bucket a Ray object (`ray.put`, in memory; zero-copy reads on the node);
- ``"disk"``: each bucket a safetensors file under ``root/v{version}/`` (written to a temporary
  name, then renamed), for rollout actors that share a file system but not the object store;
- ``"collective"``: broadcast over torch.distributed (`xt.rl.cluster.collective`), not published here.

A rollout actor receives the handle (a list of object refs, or of paths), reads one bucket at a
time and copies each tensor by its HF name into its own model (`hf_targets`: the HF views of the
model's tensors, so any receiver that knows HF names, e.g. a foreign rollout engine, reads the
same buckets); every HF tensor of its model must arrive.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xt.models import iter_hf_buckets
from xt.models.hf_stream import hf_items

__all__ = ["weight_buckets", "publish_weights", "hf_targets", "copy_bucket", "check_arrived", "load_buckets",
           "WeightHandle"]

#: what `publish_weights` returns: ``("object_store", [ObjectRef, ...])`` or ``("disk", [path, ...])``
WeightHandle = tuple[str, list[Any]]


def weight_buckets(model: nn.Module, max_bytes: int,
                   tensors: Iterable[tuple[str, torch.Tensor]] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """`model`'s weights as consecutive ``{hf_name: tensor}`` buckets of at most `max_bytes` bytes of
    tensor data (`xt.models.iter_hf_buckets`; a tensor larger than that is a bucket alone), in
    checkpoint order. The tensors are detached contiguous CPU copies.

    Args:
        model: an XT model (its typed config gives the HF names).
        max_bytes: the bucket bound, >= 1.
        tensors: its full state as ``(xt_name, tensor)``; default the plain state dict. For a model
            laid out by xt.parallel: ``FullState(model, ep_group)``, iterated on every rank in step.

    Raises:
        ValueError: ``max_bytes < 1``, or a model without a typed config.
    """
    if max_bytes < 1:
        raise ValueError(f"weight_buckets: max_bytes must be >= 1, got {max_bytes}")
    for bucket in iter_hf_buckets(model, max_bytes, tensors):
        yield {k: t.detach().to("cpu", copy=True).contiguous() for k, t in bucket}


def publish_weights(model: nn.Module, version: int, how: str, max_bytes: int, root: Path | None = None,
                    tensors: Iterable[tuple[str, torch.Tensor]] | None = None) -> WeightHandle:
    """Publish the model's weights of `version` as HF-named buckets (module docstring).

    Args:
        model: the trainer's model.
        version: the weight version (names the disk folder).
        how: "object_store" or "disk".
        max_bytes: the bucket bound.
        root: the disk folder (``how = "disk"``); versions older than the previous one are removed.
        tensors: the full state to stream (`weight_buckets`); default the plain state dict.

    Raises:
        ValueError: an unknown `how`, or ``"disk"`` without `root`.
    """
    if how not in ("object_store", "disk") or (how == "disk" and root is None):
        raise ValueError(f"publish_weights: how must be 'object_store' or 'disk' (with a root), got {how!r}")
    buckets = weight_buckets(model, max_bytes, tensors)
    if how == "object_store":
        import ray
        return how, [ray.put(b) for b in buckets]
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


def hf_targets(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{hf_name: view}``: where each HF-named tensor of a plain `model` lives in it (the family's
    ``to_hf`` applied to the model's own tensors gives views: unstacked experts, split projections),
    so copying a received tensor into its view writes the model's weights.

    Raises:
        NotImplementedError: the family's ``to_hf`` copies some tensor (e.g. a dtype conversion),
            so it cannot be written back by name.
    """
    own = {t.untyped_storage().data_ptr() for t in model.state_dict().values()}
    out = dict(hf_items(model))
    copied = [k for k, t in out.items() if t.untyped_storage().data_ptr() not in own]
    if copied:
        raise NotImplementedError(f"weight sync by HF name: {type(model).__name__}'s HF mapping copies "
                                  f"{copied[:3]} instead of viewing the model's tensors")
    return out


def copy_bucket(targets: Mapping[str, torch.Tensor], bucket: Iterable[tuple[str, torch.Tensor]],
                seen: set[str]) -> int:
    """Copy a bucket's ``(name, tensor)`` pairs into `targets` (by HF name: `hf_targets`; or by XT
    name: a plain model's ``state_dict()``, as `xt.rl.cluster.rollout_copy.refresh_copy` does),
    adding the names to `seen`; returns the bytes copied.

    Raises:
        KeyError: a name the model does not have.
        RuntimeError: a shape that differs (from ``copy_``).
    """
    n = 0
    with torch.no_grad():
        for name, t in bucket:
            if name not in targets:
                raise KeyError(f"weight sync: the trainer sent {name!r}, which the rollout model lacks")
            targets[name].copy_(t)
            seen.add(name)
            n += t.numel() * t.element_size()
    return n


def check_arrived(targets: Mapping[str, torch.Tensor], seen: set[str]) -> None:
    """Raise ``KeyError`` naming the HF tensors of `targets` not in `seen`."""
    missing = sorted(set(targets) - seen)
    if missing:
        raise KeyError(f"weight sync: {len(missing)} rollout tensors did not arrive, e.g. {missing[:3]}")


def _read(handle: WeightHandle) -> Iterable[Mapping[str, torch.Tensor]]:
    how, items = handle
    if how == "object_store":
        import ray
        return (ray.get(ref) for ref in items)
    from safetensors.torch import load_file
    return (load_file(p) for p in items)


def load_buckets(model: nn.Module, handle: WeightHandle) -> int:
    """Copy the published buckets into `model` by HF name, one bucket in memory at a time; returns
    the bytes read.

    Raises:
        KeyError: a bucket holds a name the model does not have, or a model tensor never arrived.
        RuntimeError: a shape that differs (from ``copy_``).
    """
    targets = hf_targets(model)
    seen: set[str] = set()
    nbytes = sum(copy_bucket(targets, bucket.items(), seen) for bucket in _read(handle))
    check_arrived(targets, seen)
    return nbytes
