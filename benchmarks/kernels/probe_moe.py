"""Probes behind the MoE kernel tuning (H200): host launch overhead and SwiGLU-backward configs.

1. Host time to enqueue one forward / forward+backward of each SwiGLU-experts variant while the
   GPU is kept busy (so the host never waits), against its GPU time: where the host time is not
   far below the GPU time, ``do_bench`` (which starts every repeat from an idle queue) also
   counts launch latency.
2. Every SwiGLU-backward (ACT 2) candidate config of the m-grouped kernel, launched directly on
   the Qwen3-30B-A3B shape: milliseconds per config, to see what the autotuner chose among.

Usage: ``python benchmarks/kernels/probe_moe.py [--out DIR]``; writes ``kernels-probe-<date>.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import bench_ms, env_info, write_json  # noqa: E402
from bench_moe import SHAPES, make_fn, route  # noqa: E402

from xt.kernels.moe import gg_triton  # noqa: E402


def host_enqueue_ms(fn, n: int = 20) -> float:
    """Mean host milliseconds per call of ``fn`` with the GPU busy behind a long sleep kernel."""
    fn()
    torch.cuda.synchronize()
    torch.cuda._sleep(int(2e9))  # ~1 s of GPU work ahead of the calls
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t = (time.perf_counter() - t0) / n * 1e3
    torch.cuda.synchronize()
    return t


def main(out_dir: str) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(0)
    E, k, H, I, T = SHAPES["qwen3-30b-a3b"]
    R = T * k
    x = torch.randn(R, H, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    w1 = (torch.randn(E, 2 * I, H, device="cuda", dtype=torch.bfloat16, generator=gen) * H ** -0.5).requires_grad_()
    w2 = (torch.randn(E, H, I, device="cuda", dtype=torch.bfloat16, generator=gen) * I ** -0.5).requires_grad_()
    gy = torch.randn(R, H, device="cuda", dtype=torch.bfloat16, generator=gen)
    counts = route(T, E, k, "random", gen)
    res = {"env": env_info(), "host": {}, "act2_configs": {}}
    for v in ("xt-fused-triton", "xt-fused-auto", "grouped_mm"):
        f = make_fn(v, x, w1, w2, counts)

        def fb(f=f):
            torch.autograd.grad(f(), (x, w1, w2), gy)

        def fwd(f=f):
            with torch.no_grad():
                f()
        res["host"][v] = {"fwd_host_ms": host_enqueue_ms(fwd), "fwd_gpu_ms": bench_ms(fwd),
                          "fwdbwd_host_ms": host_enqueue_ms(fb), "fwdbwd_gpu_ms": bench_ms(fb)}
        print(v, res["host"][v], flush=True)
    with torch.no_grad():
        gu, _ = gg_triton.mgrouped_swiglu(x, w1, counts)
        out = torch.empty_like(gu)
        c32 = counts.to(torch.int32)
        for cfg in gg_triton._ACT_CONFIGS:
            kw = dict(cfg.kwargs)
            grid = (min(132, (triton.cdiv(R, kw["BM"]) + E) * triton.cdiv(I, kw["BN"])),)

            def launch(kw=kw, cfg=cfg, grid=grid):
                gg_triton._mgrouped_kernel[grid](gy, w2, out, gu, c32, R, I, H, E, 1024, B_TRANS=False, E_POW2=128,
                                                 DOT_PREC="tf32", ACT=2, num_warps=cfg.num_warps,
                                                 num_stages=cfg.num_stages, **kw)
            name = str(cfg)
            try:
                launch()
                res["act2_configs"][name] = bench_ms(launch)
            except Exception as exc:
                res["act2_configs"][name] = f"{type(exc).__name__}: {exc}"[:200]
            print("ACT2", name, res["act2_configs"][name], flush=True)
    print("wrote", write_json(out_dir, "probe", res))
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    main(ap.parse_args().out)
