"""SwiGLU MoE experts on the GPU: forward and forward+backward TFLOP/s of grouped-GEMM variants.

Variants (same routed rows, same weights, bf16):
  xt-triton      our Triton kernels through the custom op (``backend="triton"``)
  xt-torch       our op with the ``torch._grouped_mm`` kernel set (adds exact-zero dW masking)
  xt-auto        ``backend="auto"`` (measures at first use, caches the fastest m/k kernel pair)
  grouped_mm     raw ``torch._grouped_mm`` with its built-in autograd (the competitor)
  xt-fused-triton  ``swiglu_experts`` with the Triton kernels: SwiGLU fused into the gate/up
                 epilogue (forward) and into the down projection's dX epilogue (backward)
  xt-fused-auto  ``swiglu_experts(backend="auto")`` (fused in Triton; dW kernel set measured)
  grouped_mm+compile  raw ``torch._grouped_mm`` with the SwiGLU compiled by ``torch.compile``
                 (inductor fuses the elementwise ops: the strongest stock-PyTorch competitor)
  loop           a per-expert Python loop of matmuls (reads counts on the host)
  dense          dense bf16 matmuls of the same FLOPs (R×H @ H×2I, R×I @ I×H): the ceiling

Experts: ``gate_up = x @ w1[e]ᵀ`` (w1 ``[E, 2I, H]``), ``h = silu(gate) * up``,
``y = h @ w2[e]ᵀ`` (w2 ``[E, H, I]``). FLOPs: forward 6·R·H·I, forward+backward 18·R·H·I
(R = T·top-k); the SwiGLU elementwise time is included for every variant.
Routing: top-k of random logits, or skewed (half the tokens put on 10% of the experts).
Timing: every variant's median over ``--rounds`` interleaved rounds of ``do_bench`` medians (the
H200's clocks drift by a few per cent between back-to-back runs of the same dense matmul).

Usage: ``python benchmarks/kernels/bench_moe.py [--out DIR] [--shapes a,b] [--variants a,b]`` (CUDA only).
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import os

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import bench_ms, env_info, table, write_json  # noqa: E402

from xt.kernels.moe import backends, gg_op, grouped_gemm, swiglu_experts  # noqa: E402

SHAPES = {  # name: (experts E, top-k, hidden H, expert intermediate I, tokens T)
    "qwen3-30b-a3b": (128, 8, 2048, 768, 16384),
    "qwen3-235b-a22b": (128, 8, 4096, 1536, 8192),
    "deepseek-v3": (256, 8, 7168, 2048, 4096),
    "gpt-oss-120b": (128, 4, 2880, 2880, 8192),
    "mixtral-8x7b": (8, 2, 4096, 14336, 8192),
}


def route(T: int, E: int, k: int, kind: str, gen: torch.Generator) -> torch.Tensor:
    """``tokens_per_expert[E]`` (int64, cuda) of top-k routing over random or skewed logits."""
    logits = torch.randn(T, E, generator=gen, device="cuda")
    if kind == "skewed":
        hot = max(1, round(0.1 * E))
        rows = torch.randperm(T, generator=gen, device="cuda")[: T // 2]
        logits[rows[:, None], torch.arange(hot, device="cuda")[None, :]] += 20.0
    ids = logits.topk(k, dim=-1).indices.reshape(-1)
    return torch.zeros(E, dtype=torch.int64, device="cuda").scatter_add_(0, ids, torch.ones_like(ids))


def swiglu(gu: torch.Tensor) -> torch.Tensor:
    g, u = gu.chunk(2, dim=-1)
    return F.silu(g) * u


_compiled_swiglu = None


def make_fn(variant: str, x, w1, w2, counts):
    global _compiled_swiglu
    if variant.startswith("xt-fused-"):
        b = variant[len("xt-fused-"):]
        return lambda: swiglu_experts(x, w1, w2, counts, backend=b)
    if variant == "grouped_mm+compile":
        if _compiled_swiglu is None:
            _compiled_swiglu = torch.compile(swiglu, dynamic=False)

        def f():
            offs = torch.cumsum(counts, 0, dtype=torch.int32)
            h = _compiled_swiglu(torch._grouped_mm(x, w1.transpose(-2, -1), offs=offs))
            return torch._grouped_mm(h, w2.transpose(-2, -1), offs=offs)
        return f
    if variant.startswith("xt-"):
        b = variant[3:]
        return lambda: grouped_gemm(swiglu(grouped_gemm(x, w1, counts, True, b)), w2, counts, True, b)
    if variant == "grouped_mm":
        def f():
            offs = torch.cumsum(counts, 0, dtype=torch.int32)
            h = swiglu(torch._grouped_mm(x, w1.transpose(-2, -1), offs=offs))
            return torch._grouped_mm(h, w2.transpose(-2, -1), offs=offs)
        return f
    if variant == "loop":
        def f():  # unbind: one stacked weight gradient, like per-expert parameters
            outs, s, w1s, w2s = [], 0, w1.unbind(0), w2.unbind(0)
            for e, c in enumerate(counts.tolist()):
                outs.append(swiglu(x[s:s + c] @ w1s[e].t()) @ w2s[e].t())
                s += c
            return torch.cat(outs)
        return f
    raise ValueError(variant)


def prepare(variant, x, w1, w2, counts, gy):
    """``(forward, forward+backward)`` callables of one variant, each run once (warm-up, tuning)."""
    if variant == "dense":
        d1 = w1[0].detach().clone().requires_grad_()
        d2 = w2[0].detach().clone().requires_grad_()

        def f():
            return swiglu(x @ d1.t()) @ d2.t()
        params = (x, d1, d2)
    else:
        f = make_fn(variant, x, w1, w2, counts)
        params = (x, w1, w2)

    def f_nograd():
        with torch.no_grad():
            return f()

    def fb():
        torch.autograd.grad(f(), params, gy)
    f_nograd()
    fb()
    return f_nograd, fb


def measure_all(fns: dict, fwd_flops: float, rounds: int) -> dict:
    """Median fwd and fwd+bwd milliseconds (and TFLOP/s) of every variant over ``rounds``
    interleaved rounds, so that clock and thermal drift hit all variants alike."""
    samples = {v: ([], []) for v in fns}
    interleaved = [v for v in fns if v != "loop"]
    for _ in range(rounds):
        for v in interleaved:
            f, fb = fns[v]
            samples[v][0].append(bench_ms(f))
            samples[v][1].append(bench_ms(fb))
    if "loop" in fns:  # last and on its own: its host syncs and many small blocks disturbed
        f, fb = fns["loop"]  # the next variant's timings when it was interleaved
        for _ in range(rounds):
            samples["loop"][0].append(bench_ms(f))
            samples["loop"][1].append(bench_ms(fb))
    out = {}
    for v, (tf, tfb) in samples.items():
        t_f, t_fb = statistics.median(tf), statistics.median(tfb)
        out[v] = {"fwd_ms": t_f, "fwdbwd_ms": t_fb, "fwd_tflops": fwd_flops / t_f / 1e9,
                  "fwdbwd_tflops": 3 * fwd_flops / t_fb / 1e9, "fwd_samples_ms": tf, "fwdbwd_samples_ms": tfb}
    return out


def check(x, w1, w2, counts, gy) -> dict:
    """Relative differences of xt-triton and xt-fused-triton vs raw torch._grouped_mm (output and
    the three grads)."""
    outs = {}
    for v in ("xt-triton", "xt-fused-triton", "grouped_mm"):
        y = make_fn(v, x, w1, w2, counts)()
        outs[v] = (y, *torch.autograd.grad(y, (x, w1, w2), gy))

    def rel(a, b):
        return float((a.float() - b.float()).norm() / b.float().norm())
    return {f"{v}/{n}": rel(a, b) for v in ("xt-triton", "xt-fused-triton")
            for n, a, b in zip(("y", "dx", "dw1", "dw2"), outs[v], outs["grouped_mm"])}


VARIANTS = ["xt-triton", "grouped_mm", "xt-fused-triton", "xt-fused-auto", "grouped_mm+compile", "xt-torch",
            "xt-auto", "loop", "dense"]


def run(out_dir: str, shapes: list[str], variants: list[str] | None = None, rounds: int = 3) -> dict:
    variants = variants or VARIANTS
    gen = torch.Generator(device="cuda").manual_seed(0)
    results = {"env": env_info(), "variants": variants, "shapes": {}, "note": __doc__}
    rows = []
    for name in shapes:
        E, k, H, I, T = SHAPES[name]
        R = T * k
        x = (torch.randn(R, H, device="cuda", dtype=torch.bfloat16, generator=gen)).requires_grad_()
        w1 = (torch.randn(E, 2 * I, H, device="cuda", dtype=torch.bfloat16, generator=gen) * H ** -0.5).requires_grad_()
        w2 = (torch.randn(E, H, I, device="cuda", dtype=torch.bfloat16, generator=gen) * I ** -0.5).requires_grad_()
        gy = torch.randn(R, H, device="cuda", dtype=torch.bfloat16, generator=gen)
        fwd_flops = 6 * R * H * I
        for kind in ("random", "skewed"):
            counts = route(T, E, k, kind, gen)
            entry = {"E": E, "top_k": k, "hidden": H, "intermediate": I, "tokens": T, "rows": R,
                     "routing": kind, "max_rows_per_expert": int(counts.max()), "empty_experts": int((counts == 0).sum())}
            try:
                entry["check_vs_grouped_mm"] = check(x, w1, w2, counts, gy)
            except Exception as exc:
                entry["check_vs_grouped_mm"] = f"{type(exc).__name__}: {exc}"[:300]
            fns = {}
            for v in variants:
                try:
                    fns[v] = prepare(v, x, w1, w2, counts, gy)
                except Exception as exc:
                    entry[v] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                    print(name, kind, v, entry[v], flush=True)
            entry.update(measure_all(fns, fwd_flops, rounds))
            for v in fns:
                print(name, kind, v, {a: round(b, 3) for a, b in entry[v].items() if isinstance(b, float)}, flush=True)
            dense, gmm = entry.get("dense", {}), entry.get("grouped_mm", {})
            for v in variants:
                m = entry[v]
                if "fwd_ms" in m and "fwd_ms" in dense and "fwd_ms" in gmm:
                    m["fwd_vs_dense"] = dense["fwd_ms"] / m["fwd_ms"]
                    m["fwdbwd_vs_dense"] = dense["fwdbwd_ms"] / m["fwdbwd_ms"]
                    m["fwd_vs_grouped_mm"] = gmm["fwd_ms"] / m["fwd_ms"]
                    m["fwdbwd_vs_grouped_mm"] = gmm["fwdbwd_ms"] / m["fwdbwd_ms"]
                    rows.append({"shape": name, "routing": kind, "variant": v, "fwd TF/s": m["fwd_tflops"],
                                 "fwd+bwd TF/s": m["fwdbwd_tflops"], "fb/dense": round(m["fwdbwd_vs_dense"], 3),
                                 "fb/gmm": round(m["fwdbwd_vs_grouped_mm"], 3), "f/gmm": round(m["fwd_vs_grouped_mm"], 3)})
            results["shapes"][f"{name}/{kind}"] = entry
            write_json(out_dir, "moe", results)
        del x, w1, w2, gy
        gc.collect()
        torch.cuda.empty_cache()
    results["auto_choices"] = {str(k): v for k, v in backends.auto_choices().items()}
    from xt.kernels.moe import gg_triton
    results["triton_configs"] = {n: {str(k): str(v) for k, v in t.cache.items()}
                                 for n, t in (("mgrouped", gg_triton._mgrouped_tuned), ("kgrouped", gg_triton._kgrouped_tuned))}
    results["table"] = rows
    path = write_json(out_dir, "moe", results)
    print(table(rows, ["shape", "routing", "variant", "fwd TF/s", "fwd+bwd TF/s", "f/gmm", "fb/gmm", "fb/dense"]))
    print("auto choices:", results["auto_choices"])
    print("wrote", path)
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    run(a.out, a.shapes.split(","), a.variants.split(","), a.rounds)
