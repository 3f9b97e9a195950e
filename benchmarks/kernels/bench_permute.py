"""Permute / unpermute time per routed token on the GPU: Triton kernels vs the torch reference.

Shape (default, Qwen3-30B-A3B layer): T=16384 tokens, top-k 8, hidden 2048, 128 experts, bf16
hidden states, float32 routing weights from random logits. Reports median microseconds of
permute, unpermute and of both with backward, and nanoseconds per routed row (T·K).

Usage: ``python benchmarks/kernels/bench_permute.py [--out DIR]``.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import bench_ms, env_info, table, write_json  # noqa: E402

from xt.kernels.moe import permute, unpermute  # noqa: E402


def run(out_dir: str, T: int = 16384, K: int = 8, D: int = 2048, E: int = 128) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(T, D, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    logits = torch.randn(T, E, device="cuda", generator=gen)
    w, ids = torch.softmax(logits, -1).topk(K, dim=-1)
    w = w.requires_grad_()
    g = torch.randn(T, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    res = {"env": env_info(), "tokens": T, "top_k": K, "hidden": D, "experts": E, "backends": {}}
    rows = []
    for b in ("reference", "triton"):
        xs, info = permute(x, ids, E, backend=b)
        ys = xs.detach() * 1.0
        t_p = bench_ms(lambda: permute(x.detach(), ids, E, backend=b))
        t_u = bench_ms(lambda: unpermute(ys, info, w.detach(), backend=b))

        def fb():
            xs_, info_ = permute(x, ids, E, backend=b)
            torch.autograd.grad(unpermute(xs_, info_, w, backend=b), (x, w), g)
        t_fb = bench_ms(fb)
        r = {"permute_us": t_p * 1e3, "unpermute_us": t_u * 1e3, "both_fwdbwd_us": t_fb * 1e3,
             "permute_ns_per_row": t_p * 1e6 / (T * K), "unpermute_ns_per_row": t_u * 1e6 / (T * K),
             "both_fwdbwd_ns_per_row": t_fb * 1e6 / (T * K)}
        res["backends"][b] = r
        rows.append({"backend": b, **{k: round(v, 2) for k, v in r.items()}})
        print(b, r, flush=True)
    path = write_json(out_dir, "permute", res)
    print(table(rows, list(rows[0])))
    print("wrote", path)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    run(a.out)
