"""Fused linear cross-entropy vs full logits + ``F.cross_entropy``: time and peak memory (GPU).

Shape (default): T=16384 tokens, V=151936 (Qwen3 vocabulary), D=2048, bf16, 5% ignored labels.
Variants: ``full`` (``logits = h @ Wᵀ`` in bf16, ``F.cross_entropy(logits.float(), reduction="sum")``),
``xt-torch`` and ``xt-triton`` (:func:`xt.kernels.loss.linear_cross_entropy`, chunked). Peak
memory is ``torch.cuda.max_memory_allocated`` during one forward+backward minus what was
allocated before it (inputs), in GiB. Time: median forward+backward (CUDA events).

Usage: ``python benchmarks/kernels/bench_loss.py [--out DIR] [--tokens T]``.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import bench_ms, env_info, table, write_json  # noqa: E402

from xt.kernels.loss import linear_cross_entropy  # noqa: E402


def run(out_dir: str, T: int = 16384, V: int = 151936, D: int = 2048) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(T, D, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    W = (torch.randn(V, D, device="cuda", dtype=torch.bfloat16, generator=gen) * D ** -0.5).requires_grad_()
    lab = torch.randint(0, V, (T,), device="cuda", generator=gen)
    lab[torch.rand(T, device="cuda", generator=gen) < 0.05] = -100

    def full():
        return F.cross_entropy((h @ W.t()).float(), lab, ignore_index=-100, reduction="sum")

    fns = {"full": full,
           "xt-torch": lambda: linear_cross_entropy(h, W, lab, backend="torch"),
           "xt-triton": lambda: linear_cross_entropy(h, W, lab, backend="triton")}
    res = {"env": env_info(), "tokens": T, "vocab": V, "hidden": D, "dtype": "bfloat16", "variants": {}}
    grads = {}
    for name, fn in fns.items():
        try:
            loss = fn()
            grads[name] = (loss.detach(), *torch.autograd.grad(loss, (h, W)))
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            torch.autograd.grad(fn(), (h, W))
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 30
            t = bench_ms(lambda: torch.autograd.grad(fn(), (h, W)))
            res["variants"][name] = {"fwdbwd_ms": t, "peak_gib": peak, "loss": float(loss)}
        except Exception as exc:
            res["variants"][name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        print(name, res["variants"][name], flush=True)
        torch.cuda.empty_cache()
    if "full" in grads:
        ref = grads["full"]
        for name, g in grads.items():
            res["variants"][name]["rel_diff_vs_full"] = [float((a.float() - b.float()).norm() / b.float().norm())
                                                        for a, b in zip(g, ref)]
    rows = [{"variant": k, "fwd+bwd ms": v.get("fwdbwd_ms", float("nan")), "peak GiB": v.get("peak_gib", float("nan")),
             "rel diff (loss,dh,dW)": str([round(x, 5) for x in v.get("rel_diff_vs_full", [])])}
            for k, v in res["variants"].items()]
    res["table"] = rows
    path = write_json(out_dir, "loss", res)
    print(table(rows, ["variant", "fwd+bwd ms", "peak GiB", "rel diff (loss,dh,dW)"]))
    print("wrote", path)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tokens", type=int, default=16384)
    a = ap.parse_args()
    run(a.out, a.tokens)
