"""Why some `xt train` steps after the first take 10x the median: what each step compiled or tuned.

Assembles the run as `xt train CONFIG --set ...` does, then for every step prints its time and
what grew during it: the grouped-GEMM `auto` choices (``backends._auto_cache``), the Triton
autotuners' tuned keys, and the compiled variants of every Triton kernel XT owns (a new variant =
a JIT compile). A stall with nothing grown points outside these caches.

    python benchmarks/train/stall_probe.py examples/qwen3_moe_5b.toml --steps 8
"""
from __future__ import annotations

import argparse
import time

import torch


def _triton_state() -> dict[str, int]:
    """Tuned keys per autotuner and compiled variants per Triton kernel of xt.kernels."""
    out: dict[str, int] = {}
    try:
        from xt.kernels.loss import ce_triton
        from xt.kernels.moe import gg_triton, gg_triton_kernels, permute_triton
    except Exception:  # noqa: BLE001 - no Triton here: nothing to count
        return out
    for name, tuner in (("tuned:mgrouped", gg_triton._mgrouped_tuned), ("tuned:kgrouped", gg_triton._kgrouped_tuned)):
        out[name] = len(getattr(tuner, "cache", {}))
    for mod in (gg_triton_kernels, permute_triton, ce_triton):
        for attr in dir(mod):
            fn = getattr(mod, attr)
            caches = getattr(fn, "device_caches", None)
            if isinstance(caches, dict):
                out[f"jit:{attr}"] = sum(len(c[0]) if isinstance(c, tuple) else len(c) for c in caches.values())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()

    from xt.cli.config import load_xt_config
    from xt.cli.train import build_run
    from xt.core.checkpoint import seed_everything
    from xt.core.engine import Trainer
    from xt.parallel import device_for_run
    from xt.kernels.moe import backends

    cfg = load_xt_config(args.config, args.overrides)
    device = device_for_run()
    seed_everything(cfg.train.seed)
    model, dist, loader_obj = build_run(cfg, device)
    loader = iter(loader_obj)
    trainer = Trainer(model, loader_obj, cfg.train, cfg.optim, cfg.schedule, cfg.checkpoint, dist=dist)
    before = {"auto": len(backends._auto_cache), **_triton_state()}
    for step in range(1, args.steps + 1):
        mbs = [next(loader) for _ in range(cfg.train.micro_batches_per_step)]
        sizes = sorted(int(mb["input_ids"].numel()) for mb in mbs)
        t = time.perf_counter()
        m = trainer.train_step(mbs)
        dt = time.perf_counter() - t
        now = {"auto": len(backends._auto_cache), **_triton_state()}
        grown = {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)}
        new_auto = list(backends._auto_cache.items())[before["auto"]:]
        print(f"step {step}: {dt:6.2f}s  tokens {m['num_tokens']}  micro-batch T {sizes[0]}..{sizes[-1]}  "
              f"grew {grown}  new auto {new_auto}", flush=True)
        before = now
    if torch.cuda.is_available():
        print(f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)


if __name__ == "__main__":
    main()
