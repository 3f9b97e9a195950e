"""Run in a fresh interpreter: one process pretends to be rank r of N (torch's fake process group),
builds a full-size model on meta, lays it out with `parallelize` and compares every parameter's
local shard with `xt.parallel.shard_math.local_shapes` and the planner's parameter bytes.

``python fake_scale_cases.py CASES_JSON OUT_JSON``; each case ``{"config", "world", "rank",
"layout"}``; the output lists, per case, the mismatching parameters, the rank's local parameter
bytes as measured (sum of DTensor local shards) and as planned, and the model's size.
"""
from __future__ import annotations

import json
import math
import sys
import time
import tomllib
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.testing._internal.distributed.fake_pg import FakeStore


def run_case(case: dict) -> dict:
    from xt.models import build_model
    from xt.parallel import ParallelConfig, parallelize
    from xt.parallel.memory_plan import expert_param_names, plan_memory
    from xt.parallel.shard_math import local_shapes
    t0 = time.perf_counter()
    cfg = ParallelConfig(**case["layout"])
    dist.init_process_group("fake", store=FakeStore(), rank=case["rank"], world_size=case["world"])
    try:
        model_cfg = tomllib.loads(Path(case["config"]).read_text())["model"]["config"]
        torch.manual_seed(0)
        model = build_model(model_cfg, device="meta")
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        predicted = local_shapes(shapes, expert_param_names(model), cfg, case["world"], case["rank"])
        plan = plan_memory(model, cfg, case["world"], rank=case["rank"], tokens_per_micro_batch=4096)
        model, _ = parallelize(model, cfg, device_type="cpu")
        got = {n: tuple((p.to_local() if isinstance(p, DTensor) else p).shape) for n, p in model.named_parameters()}
        meta = all((p.to_local() if isinstance(p, DTensor) else p).is_meta for p in model.parameters())
    finally:
        dist.destroy_process_group()
    bad = [n for n in shapes if got.get(n) != predicted.get(n)]
    local = sum(4 * math.prod(s) for s in got.values())
    return {"mismatches": bad[:10], "num_mismatches": len(bad), "num_params": len(shapes), "local_bytes": local,
            "planned_bytes": plan.params, "total_params": sum(math.prod(s) for s in shapes.values()),
            "all_meta": meta, "seconds": time.perf_counter() - t0}


if __name__ == "__main__":
    cases = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(json.dumps([run_case(c) for c in cases]))
