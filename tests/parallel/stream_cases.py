"""Streamed export cases run by every rank of a pool: a model built on meta and laid out, then exported
through the run's hook (each rank writes its share of the files) with the bytes it allocated meanwhile
measured, and streamed in HF buckets (``xt.models.iter_hf_buckets`` over ``FullState``)."""
from __future__ import annotations

import torch

from meta_cases import local_bytes
from parallel_cases import _meshes


def _all_gather(value: float) -> list[float]:
    import torch.distributed as dist
    got = [torch.zeros(()) for _ in range(dist.get_world_size())]
    dist.all_gather(got, torch.tensor(float(value)))
    return [float(g) for g in got]


def run_streamed_export(spec: dict, state: dict) -> dict:
    """One rank: meta build, layout, materialise, export to ``spec["dir"]`` (``max_shard_size``) under
    ``MemTracker`` (the model's shards tracked as external), then the HF buckets of ``spec["bucket"]``
    bytes. Returns every rank's export peak minus its shard bytes, the largest full tensor, and the
    buckets (rank 0's tensors, every rank's bucket sizes)."""
    import functools

    import torch.distributed as dist
    from torch.distributed._tools.mem_tracker import MemTracker

    from xt.models import build_model, iter_hf_buckets, save_pretrained
    from xt.parallel import exporter, materialize_, parallelize
    from xt.parallel.full_state import FullState
    cfg, meshes = _meshes(spec, state)
    torch.manual_seed(spec["seed"])
    model = build_model(spec["model"], device="meta", attn_backend="sdpa")
    model, ctx = parallelize(model, cfg, device_type="cpu", meshes=meshes)
    materialize_(model, "cpu")
    largest = max(torch.Size(s).numel() * d.itemsize for _, s, d in FullState(model, meshes.ep_group).layout)
    write = functools.partial(save_pretrained, max_shard_size=spec["max_shard_size"])
    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        exporter(write, ctx)(model, spec["dir"])
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    buckets = [[(n, t.clone()) for n, t in b]
               for b in iter_hf_buckets(model, spec["bucket"], tensors=FullState(model, meshes.ep_group))]
    out = {"extra": _all_gather(peak - local_bytes(model)), "largest": largest, "buckets": buckets,
           "n_buckets": _all_gather(len(buckets))}
    dist.barrier()
    return out
