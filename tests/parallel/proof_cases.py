"""The world-4 proof (issue 13) run by every rank of a pool: build on meta from an HF folder, load each
rank's rows, train 2 steps (SGD with momentum), export the HF folder streamed; every byte the rank allocates
meanwhile is tracked (``MemTracker``, from before the build to after the export)."""
from __future__ import annotations

import torch

from parallel_cases import _meshes, make_batch


def proof_batches(spec: dict, step: int, world: int) -> list[dict]:
    """Step `step`'s micro-batch of every data-parallel rank (the reference takes them all)."""
    return [make_batch(spec["seed"] * 100 + step * world + r, spec["docs"], spec["vocab"]) for r in range(world)]


def proof_optimizer(params, spec: dict) -> torch.optim.Optimizer:
    """SGD with momentum: its update is linear in the gradient, so 1e-5 between a sharded run and one
    process means something in fp32 (AdamW's first steps are ~lr * sign(g) and turn the rounding noise
    of ~zero gradients into visible updates: tests/parallel/test_parallel_equivalence.py)."""
    return torch.optim.SGD(params, lr=spec["lr"], momentum=0.9, weight_decay=0.1)


def run_proof(spec: dict, state: dict) -> dict:
    """One rank: ``run_model_source`` (meta + the folder's row reader), layout, sharded load, 2 steps,
    export to ``spec["out"]``; every rank's tracked peak, the losses, the bytes read."""
    import functools

    import torch.distributed as dist
    from torch.distributed._tools.mem_tracker import MemTracker

    from xt.core.engine.loss import count_label_tokens, micro_batch_objective
    from xt.models import ModelSection, run_model_source, save_pretrained
    from xt.models import hf_rows
    from xt.parallel import exporter, materialize_, parallelize
    cfg, meshes = _meshes(spec, state)
    readers = []
    real = hf_rows.hf_row_reader
    hf_rows.hf_row_reader = lambda *a: readers.append(real(*a)) or readers[-1]  # count the bytes read
    tracker = MemTracker()
    losses = []
    try:
        with tracker:
            model, read = run_model_source(ModelSection(init_from=spec["hf"], attn_backend="sdpa"), "cpu")
            model, ctx = parallelize(model, cfg, device_type="cpu", meshes=meshes)
            materialize_(model, "cpu", read=read)
            opt = proof_optimizer(model.parameters(), spec)
            for step in range(2):
                tracker.reset_mod_stats()  # per-module stats of one iteration only; the peak is kept
                mb = ctx.shard_batch(proof_batches(spec, step, ctx.dp_size)[ctx.dp_rank])
                n_tok = ctx.all_reduce_sum(count_label_tokens([mb], torch.device("cpu")))
                loss = micro_batch_objective(model(**mb), n_tok, 1, ctx.world_size)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(float(ctx.all_reduce_sum(loss.detach())))
            # files of 4 MB for a 29 MB model (as 5 GB files are for a 1T model): spread over the ranks
            exporter(functools.partial(save_pretrained, max_shard_size="4MB"), ctx)(model, spec["out"])
    finally:
        hf_rows.hf_row_reader = real
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    got = [torch.zeros(2) for _ in range(dist.get_world_size())]
    dist.all_gather(got, torch.tensor([float(peak), float(readers[0][1].bytes_read)]))
    dist.barrier()
    return {"peaks": [int(g[0]) for g in got], "bytes_read": [int(g[1]) for g in got], "losses": losses}
