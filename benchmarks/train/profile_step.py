"""Where the time of one `xt train` step goes: the CUDA kernels of a step, profiled.

Assembles the run exactly as `xt train CONFIG --set ...` does (config, model, layout, loader,
`Trainer`), runs ``--warmup`` steps (compilation, autotuning), then profiles ``--steps`` steps with
`torch.profiler` and prints the kernels by total CUDA time, grouped into families (attention,
grouped GEMM, dense GEMM, loss, casts, optimizer, other) so that a change can be judged against
the share it targets. Writes the full table to ``--out`` (default ``$OUT/profile-step.txt``).

    python benchmarks/train/profile_step.py examples/qwen3_moe_5b.toml \
        --set data.tokens_per_micro_batch=4096 --set data.max_seq_len=4096 --set train.micro_batches_per_step=4

Not a benchmark of record (``benchmarks/train/bench_train.py`` is): profiling adds overhead.
"""
from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from pathlib import Path

import torch

# kernel-name fragments -> family (first match wins)
FAMILIES = [
    ("attention", ("flash", "fmha", "attention", "softmax", "sdpa")),
    ("grouped GEMM", ("mgrouped", "kgrouped", "grouped_mm", "_grouped", "grouped_gemm", "groupproblemshape")),
    ("fused loss", ("_ce_", "cross_entropy", "nll_loss", "log_softmax")),
    ("dense GEMM", ("gemm", "cutlass", "sm90_xmma", "nvjet", "cublas", "matmul")),
    ("fp32 add (grad accumulation)", ("cudafunctor_add<float>",)),
    ("permute/combine", ("_gather_kernel", "_combine_kernel", "_wgrad_kernel", "index_add", "scatter", "gather")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("cast/copy", ("copy", "cast", "convert", "to_copy")),
]


def family(name: str) -> str:
    """The family of a CUDA kernel name (see `FAMILIES`), "other" if none matches."""
    low = name.lower()
    for fam, keys in FAMILIES:
        if any(k in low for k in keys):
            return fam
    return "other"


def sync_report(trainer, mbs, sync) -> None:
    """One unprofiled step: its wall and process CPU time (all threads; near the wall time means
    the host is the bottleneck), then the same step again under ``set_sync_debug_mode("warn")``
    with each synchronising call site and how often it fired."""
    import collections
    import warnings

    t, c = time.perf_counter(), time.process_time()
    trainer.train_step(mbs)
    sync()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    print(f"sync-debug: step wall {wall:.3f}s, process CPU {cpu:.3f}s ({100 * cpu / wall:.0f}% of wall)", flush=True)
    sites: collections.Counter = collections.Counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.train_step(mbs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        if "synchroniz" in str(w.message):
            sites[f"{w.filename}:{w.lineno}"] += 1
    print(f"sync-debug: {sum(sites.values())} synchronising calls in one step", flush=True)
    for site, n in sites.most_common(25):
        print(f"  {n:5d}  {site}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--sync-debug", action="store_true",
                    help="before profiling, run one step with torch.cuda.set_sync_debug_mode('warn') and list "
                         "every host-synchronising call site, and report the step's CPU time vs wall time")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "benchmarks/results"), "profile-step.txt"))
    args = ap.parse_args()

    from torch.profiler import ProfilerActivity, profile

    from xt.cli.config import load_xt_config
    from xt.cli.train import build_run
    from xt.core.checkpoint import seed_everything
    from xt.core.engine import Trainer
    from xt.parallel import device_for_run

    cfg = load_xt_config(args.config, args.overrides)
    device = device_for_run()
    seed_everything(cfg.train.seed)
    t0 = time.perf_counter()
    model, dist, loader_obj = build_run(cfg, device)
    loader = iter(loader_obj)
    trainer = Trainer(model, loader_obj, cfg.train, cfg.optim, cfg.schedule, cfg.checkpoint, dist=dist)
    print(f"built in {time.perf_counter() - t0:.1f}s; precision: {trainer.precision_summary}", flush=True)
    draw = lambda: [next(loader) for _ in range(cfg.train.micro_batches_per_step)]  # noqa: E731
    for i in range(args.warmup):
        m = trainer.train_step(draw())
        print(f"warm-up step {i + 1}: {m['step_time_s']:.2f}s, {m['tokens_per_s']:.0f} tokens/s, loss {m['loss']:.3f}, "
              f"{m['max_memory_gib']:.1f} GiB", flush=True)
    batches = [draw() for _ in range(args.steps)]
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    if args.sync_debug:
        sync_report(trainer, draw(), sync)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        tokens = 0
        for mbs in batches:
            m = trainer.train_step(mbs)
            tokens += m["num_tokens"]
        sync()
        wall = time.perf_counter() - t
    # Only the device-side events (kernels, memcpy/memset): the CPU ops' rows would count their
    # kernels a second time. Self device time of a kernel event is the kernel's own time.
    dev_time = lambda e: getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)  # noqa: E731
    kernels = [e for e in prof.key_averages()
               if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA and dev_time(e) > 0]
    total = sum(dev_time(e) for e in kernels) or 1.0
    fams: dict[str, float] = defaultdict(float)
    for e in kernels:
        fams[family(e.key)] += dev_time(e)
    lines = [f"{args.steps} profiled steps: {wall:.2f}s wall, {tokens / wall:.0f} tokens/s (with profiler overhead); "
             f"GPU kernel time {total / 1e6:.2f}s", "", "family                        share   seconds"]
    for fam, us in sorted(fams.items(), key=lambda kv: -kv[1]):
        lines.append(f"{fam:<28} {100 * us / total:6.1f}%  {us / 1e6:7.3f}")
    lines += ["", "top kernels (CUDA time, calls, family):"]
    for e in sorted(kernels, key=dev_time, reverse=True)[:args.top]:
        lines.append(f"{dev_time(e) / 1e6:8.3f}s {e.count:6d}  {family(e.key):<28} {e.key[:110]}")
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n\n" + prof.key_averages().table(sort_by="cuda_time_total", row_limit=80))


if __name__ == "__main__":
    main()
