"""Per-kernel breakdown of the SwiGLU experts' forward+backward: our Triton kernels vs ``torch._grouped_mm``.

For each shape and routing it times every product of one training step separately (same inputs):

  fwd gate_up   x[R, H] @ w1[e]ᵀ -> [R, 2I]   (ours: SwiGLU fused in the epilogue, writes h too)
  fwd down      h[R, I] @ w2[e]ᵀ -> [R, H]
  bwd dh        dy[R, H] @ w2[e] -> [R, I]    (ours: dSwiGLU fused in the epilogue, writes [R, 2I])
  bwd dW_down   dyᵀ h per expert -> [E, H, I]
  bwd dW_gate_up  d_gate_upᵀ x per expert -> [E, 2I, H]
  bwd dx        d_gate_up @ w1[e] -> [R, H]
  swiglu fwd/bwd  the eager PyTorch elementwise ops that the unfused path adds (torch column only)

Timing: each part's median over ``--rounds`` interleaved rounds of ``triton.testing.do_bench``
medians, so clock drift hits both columns alike. Prints a table, writes
``kernels-moe-parts-<date>.json``. Usage: ``python benchmarks/kernels/bench_moe_parts.py
[--shapes a,b] [--rounds N] [--out DIR]`` (CUDA only).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import bench_ms, env_info, table, write_json  # noqa: E402
from bench_moe import SHAPES, route  # noqa: E402

from xt.kernels.moe import gg_triton  # noqa: E402


def parts(x, w1, w2, counts, dy):
    """``{part: (ours_fn, torch_fn, flops)}`` for one set of inputs."""
    R, H = x.shape
    I = w2.shape[2]
    offs = torch.cumsum(counts, 0, dtype=torch.int32)
    gu, h = gg_triton.mgrouped_swiglu(x, w1, counts)
    dgu = gg_triton.mgrouped_dswiglu(dy, w2, gu, counts, False)
    gmm = torch._grouped_mm
    gu_t = gu.clone().requires_grad_()

    def swiglu_bwd():
        g, u = gu_t.chunk(2, dim=-1)
        torch.autograd.grad(F.silu(g) * u, gu_t, h)

    def swiglu_fwd():
        g, u = gu.chunk(2, dim=-1)
        return F.silu(g) * u
    f2, f1 = 2 * R * H * I, 2 * R * H * 2 * I
    return {
        "fwd gate_up": (lambda: gg_triton.mgrouped_swiglu(x, w1, counts), lambda: gmm(x, w1.transpose(-2, -1), offs=offs), f1),
        "fwd down": (lambda: gg_triton.mgrouped(h, w2, counts, True), lambda: gmm(h, w2.transpose(-2, -1), offs=offs), f2),
        "bwd dh": (lambda: gg_triton.mgrouped_dswiglu(dy, w2, gu, counts, False), lambda: gmm(dy, w2, offs=offs), f2),
        "bwd dW_down": (lambda: gg_triton.kgrouped(dy, h, counts), lambda: gmm(dy.t(), h, offs=offs), f2),
        "bwd dW_gate_up": (lambda: gg_triton.kgrouped(dgu, x, counts), lambda: gmm(dgu.t(), x, offs=offs), f1),
        "bwd dx": (lambda: gg_triton.mgrouped(dgu, w1, counts, False), lambda: gmm(dgu, w1, offs=offs), f1),
        "swiglu fwd": (None, swiglu_fwd, 0),
        "swiglu bwd": (None, swiglu_bwd, 0),
    }


def run(out_dir: str, shapes: list[str], rounds: int) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(0)
    results = {"env": env_info(), "shapes": {}, "note": __doc__}
    rows = []
    for name in shapes:
        E, k, H, I, T = SHAPES[name]
        R = T * k
        x = torch.randn(R, H, device="cuda", dtype=torch.bfloat16, generator=gen)
        w1 = torch.randn(E, 2 * I, H, device="cuda", dtype=torch.bfloat16, generator=gen) * H ** -0.5
        w2 = torch.randn(E, H, I, device="cuda", dtype=torch.bfloat16, generator=gen) * I ** -0.5
        dy = torch.randn(R, H, device="cuda", dtype=torch.bfloat16, generator=gen)
        for kind in ("random", "skewed"):
            counts = route(T, E, k, kind, gen)
            ps = parts(x, w1, w2, counts, dy)
            times = {p: {"ours": [], "torch": []} for p in ps}
            for fns in ps.values():  # warm-up: autotuning and first launches
                for fn in fns[:2]:
                    if fn is not None:
                        fn()
            for _ in range(rounds):
                for p, (ours, theirs, _) in ps.items():
                    if ours is not None:
                        times[p]["ours"].append(bench_ms(ours))
                    times[p]["torch"].append(bench_ms(theirs))
            entry = {}
            for p, (_, _, flops) in ps.items():
                o = statistics.median(times[p]["ours"]) if times[p]["ours"] else None
                t = statistics.median(times[p]["torch"])
                entry[p] = {"ours_ms": o, "torch_ms": t, "ours_samples": times[p]["ours"], "torch_samples": times[p]["torch"]}
                rows.append({"shape": name, "routing": kind, "part": p, "ours ms": o if o else "", "torch ms": t,
                             "ours TF/s": flops / o / 1e9 if o and flops else "",
                             "torch TF/s": flops / t / 1e9 if flops else "",
                             "torch/ours": round(t / o, 3) if o else ""})
            results["shapes"][f"{name}/{kind}"] = entry
            print(table([r for r in rows if r["shape"] == name and r["routing"] == kind],
                        ["shape", "routing", "part", "ours ms", "torch ms", "ours TF/s", "torch TF/s", "torch/ours"]),
                  flush=True)
            write_json(out_dir, "moe-parts", results)
        del x, w1, w2, dy
        torch.cuda.empty_cache()
    results["triton_configs"] = {n: {str(k): str(v) for k, v in t.cache.items()}
                                 for n, t in (("mgrouped", gg_triton._mgrouped_tuned), ("kgrouped", gg_triton._kgrouped_tuned))}
    results["table"] = rows
    print("wrote", write_json(out_dir, "moe-parts", results))
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--shapes", default="qwen3-30b-a3b")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    run(a.out, a.shapes.split(","), a.rounds)
