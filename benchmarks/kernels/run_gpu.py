"""One GPU session: correctness checks, then the MoE, permute and loss benchmarks (in one process,
so Triton's compiled kernels are shared). Writes ``kernels-*.json`` under ``--out``.

Usage: ``python benchmarks/kernels/run_gpu.py --out DIR [--skip moe,loss,...] [--shapes ...] [--variants ...]``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--skip", default="")
    ap.add_argument("--shapes", default="")
    ap.add_argument("--variants", default="")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    t0 = time.time()
    import check_gpu
    if "check" not in skip:
        res = check_gpu.run()
        with open(os.path.join(a.out, "kernels-check.json"), "w") as f:
            json.dump(res, f, indent=1)
        print(f"[{time.time() - t0:.0f}s] checks done", flush=True)
    for name in ("permute", "loss", "moe"):
        if name in skip:
            continue
        mod = __import__(f"bench_{name}")
        try:
            if name == "moe":
                import bench_moe
                mod.run(a.out, a.shapes.split(",") if a.shapes else list(bench_moe.SHAPES),
                        a.variants.split(",") if a.variants else None)
            else:
                mod.run(a.out)
        except Exception as exc:
            print(f"bench_{name} FAILED: {type(exc).__name__}: {exc}", flush=True)
        print(f"[{time.time() - t0:.0f}s] {name} done", flush=True)
