"""Meta-device construction cases run by every rank of a pool (and their single-process references).

A spec holds ``model`` (HF config dict), ``seed``, ``layout`` (ParallelConfig kwargs) and ``docs``
(one micro-batch of document lengths per data-parallel rank). The rank builds the model on meta,
lays it out there, materialises its shards (:func:`xt.parallel.materialize_`) and returns the
assembled full tensors, one training step's loss and gradients, and what it allocated.
"""
from __future__ import annotations

import torch

from parallel_cases import _meshes, make_batch


def _batches(spec: dict) -> list[dict]:
    return [make_batch(spec["seed"] * 100 + r, lens, spec["model"]["vocab_size"]) for r, lens in enumerate(spec["docs"])]


def reference_meta(spec: dict) -> dict:
    """One process, eager build (seeded as the ranks are), the same step over all ranks' batches."""
    from xt.core.engine.loss import micro_batch_objective
    from xt.models import build_model
    torch.manual_seed(spec["seed"])
    model = build_model(spec["model"], attn_backend="sdpa")
    params = {n: t.detach().clone() for n, t in model.named_parameters()}
    buffers = {n: t.detach().clone() for n, t in model.named_buffers()}
    batches = _batches(spec)
    n_tok = torch.tensor(sum(int((b["labels"] != -100).sum()) for b in batches))
    loss = sum(micro_batch_objective(model(**b), n_tok, 1, len(batches)) for b in batches)
    loss.backward()
    grads = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()}
    return {"params": params, "buffers": buffers, "loss": float(loss.detach()), "grads": grads}


def local_bytes(model) -> int:
    """Bytes of this rank's local parameter and buffer storage (DTensor shards counted locally)."""
    from torch.distributed.tensor import DTensor
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        local = t.to_local() if isinstance(t, DTensor) else t
        total += local.numel() * local.element_size()
    return total


def run_meta(spec: dict, state: dict) -> dict:
    """One rank: meta build, layout on meta, materialise, gather, one step (collective over the pool)."""
    import torch.distributed as dist

    from xt.core.engine.loss import count_label_tokens, micro_batch_objective
    from xt.models import build_model
    from xt.parallel import materialize_, parallelize
    from xt.parallel.gather import gather_full
    cfg, meshes = _meshes(spec, state)
    torch.manual_seed(spec["seed"])
    model = build_model(spec["model"], device="meta", attn_backend="sdpa")
    model, ctx = parallelize(model, cfg, device_type="cpu", meshes=meshes)
    materialize_(model, "cpu")
    out = {"bytes": ctx.all_reduce_sum(torch.tensor(float(local_bytes(model)))).item(),
           "max_bytes": _max_over_ranks(local_bytes(model))}
    sd = gather_full(model, meshes.ep_group)
    out["params"] = sd
    out["buffers"] = {n: t.detach().clone() for n, t in model.named_buffers()}
    mbs = [ctx.shard_batch(_batches(spec)[ctx.dp_rank])]
    n_tok = ctx.all_reduce_sum(count_label_tokens(mbs, torch.device("cpu")))
    total = torch.zeros(())
    for mb in mbs:
        loss = micro_batch_objective(model(**mb), n_tok, 1, ctx.world_size)
        loss.backward()
        total += loss.detach()
    out["loss"] = float(ctx.all_reduce_sum(total))
    out["grads"] = gather_full(model, meshes.ep_group, grads=True)
    dist.barrier()
    return out


def _max_over_ranks(value: int) -> int:
    import torch.distributed as dist
    t = torch.tensor(float(value))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def run_meta_memory(spec: dict, state: dict) -> dict:
    """One rank: peak CPU bytes allocated (``torch.distributed._tools.mem_tracker.MemTracker``)
    from the meta build through layout and materialisation; every rank's peak and local bytes, and
    the full model's bytes (from the meta model's global shapes)."""
    import torch.distributed as dist
    from torch.distributed._tools.mem_tracker import MemTracker

    from xt.models import build_model
    from xt.parallel import materialize_, parallelize
    cfg, meshes = _meshes(spec, state)
    torch.manual_seed(spec["seed"])
    tracker = MemTracker()
    with tracker:
        model = build_model(spec["model"], device="meta", attn_backend="sdpa")
        full = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
        model, _ = parallelize(model, cfg, device_type="cpu", meshes=meshes)
        materialize_(model, "cpu")
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    world = dist.get_world_size()
    both = torch.tensor([float(peak), float(local_bytes(model))])
    gathered = [torch.zeros(2) for _ in range(world)]
    dist.all_gather(gathered, both)
    dist.barrier()
    return {"peaks": [int(g[0]) for g in gathered], "locals": [int(g[1]) for g in gathered], "full_bytes": full}


def run_peak(spec: dict, state: dict | None = None) -> dict:
    """One rank (or one process with ``state=None``): meta build, layout, AdamW, two training steps;
    the peak bytes allocated during the second step (``MemTracker``, parameters, gradients and
    optimizer state tracked) and the planner's prediction for this rank."""
    import torch.distributed as dist
    from torch.distributed._tools.mem_tracker import MemTracker

    from xt.core.engine.loss import count_label_tokens, micro_batch_objective
    from xt.core.distributed import LocalDistContext
    from xt.models import build_model
    from xt.parallel import ParallelConfig, materialize_, parallelize
    from xt.parallel.memory_plan import plan_memory
    torch.manual_seed(spec["seed"])
    model = build_model(spec["model"], device="meta", attn_backend="sdpa")
    if state is None:
        cfg = ParallelConfig(**spec["layout"])
        world, rank = 1, 0
        predicted = plan_memory(model, cfg, 1, tokens_per_micro_batch=spec["tokens"], compute_bytes=4, fsdp=False, math_attention=True,
                                doc_tokens=spec["tokens"] // 4)
        materialize_(model, "cpu")
        ctx = LocalDistContext()
    else:
        cfg, meshes = _meshes(spec, state)
        world, rank = dist.get_world_size(), dist.get_rank()
        predicted = plan_memory(model, cfg, world, rank=rank, tokens_per_micro_batch=spec["tokens"], compute_bytes=4,
                                math_attention=True, doc_tokens=spec["tokens"] // 4)
        model, ctx = parallelize(model, cfg, device_type="cpu", meshes=meshes)
        materialize_(model, "cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)
    dp_rank = getattr(ctx, "dp_rank", 0)
    dp = getattr(ctx, "dp_size", 1)

    def step(s):
        lens = [spec["tokens"] // 4] * 4
        mb = make_batch(spec["seed"] * 100 + s * dp + dp_rank, lens, spec["model"]["vocab_size"])
        mb = ctx.shard_batch(mb) if hasattr(ctx, "shard_batch") else mb
        n_tok = ctx.all_reduce_sum(count_label_tokens([mb], torch.device("cpu")))
        micro_batch_objective(model(**mb), n_tok, 1, world).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    step(0)
    tracker = MemTracker()
    tracker.track_external(model, opt)
    with tracker:
        step(1)
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    out = {"peak": peak, "predicted": predicted.as_dict()}
    if state is not None:
        t = torch.tensor([float(peak), float(predicted.total)])
        got = [torch.zeros(2) for _ in range(world)]
        dist.all_gather(got, t)
        out["per_rank"] = [(int(a), int(b)) for a, b in got]
        dist.barrier()
    return out


def run_sharded_load(spec: dict, state: dict) -> dict:
    """One rank: meta build, layout, then its shards loaded from the HF folder ``spec["hf"]`` with
    only its rows read; the gathered parameters and every rank's bytes read."""
    import torch.distributed as dist

    from xt.models import build_model, config_from_hf
    from xt.models.hf_rows import hf_row_reader
    from xt.parallel import materialize_, parallelize
    from xt.parallel.gather import gather_full
    cfg, meshes = _meshes(spec, state)
    model = build_model(spec["model"], device="meta", attn_backend="sdpa")
    model, _ = parallelize(model, cfg, device_type="cpu", meshes=meshes)
    read, reader = hf_row_reader(spec["hf"], config_from_hf(spec["model"]))
    materialize_(model, "cpu", read=read)
    world = dist.get_world_size()
    got = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(got, torch.tensor(float(reader.bytes_read)))
    out = {"params": gather_full(model, meshes.ep_group), "bytes_read": [int(g) for g in got],
           "buffers": {n: b.detach().clone() for n, b in model.named_buffers()}}
    dist.barrier()
    return out


def run_xt_weights_load(spec: dict, state: dict) -> dict:
    """One rank: ``run_model_source`` of ``init_from`` an XT weights folder (meta), layout,
    materialise, then ``finish_run_model`` (DCP loads this rank's shards); the gathered parameters
    and persistent buffers."""
    import torch.distributed as dist

    from xt.models import ModelSection, finish_run_model, run_model_source
    from xt.parallel import materialize_, parallelize
    from xt.parallel.export import full_state_dict
    cfg, meshes = _meshes(spec, state)
    section = ModelSection(init_from=spec["xt"], attn_backend="sdpa")
    model, read = run_model_source(section, "cpu")
    assert read is None
    model, _ = parallelize(model, cfg, device_type="cpu", meshes=meshes)
    materialize_(model, "cpu")
    finish_run_model(section, model)
    out = {"state": full_state_dict(model, meshes.ep_group)}
    dist.barrier()
    return out
