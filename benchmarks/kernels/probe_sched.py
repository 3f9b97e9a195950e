"""Probe of the grouped GEMM's scheduling options on the Qwen3-30B-A3B shape (H200).

Every GEMM of the SwiGLU experts' forward+backward (gate/up with the SwiGLU epilogue, down, dh with
the SwiGLU backward epilogue, dx, and the two weight gradients) is launched directly with a list of
tile configs crossed with kernel options: ``WS`` (Triton's warp specialisation), a register cap,
and ``FAST_SIG`` (the ``tanh.approx`` sigmoid of the SwiGLU epilogues). Prints milliseconds per
launch and, with ``--autotuned``, what the autotuner picked.

Earlier versions of this probe also tried 2-3 programs per SM, Triton's loop flattening and an L2
prefetch of the saved gate/up tiles; none helped and the kernels dropped them (the measurements
stay in ``benchmarks/results/kernels-sched-{occ-flatten,l2prefetch}-2026-11-29.json``).

Usage: ``python benchmarks/kernels/probe_sched.py [--only dh+dswiglu,dw_down] [--sched all|fastsig]
[--tiles 0,1] [--autotuned] [--out DIR]``;
writes ``kernels-sched-<date>.json``.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import bench_ms, env_info, write_json  # noqa: E402
from bench_moe import SHAPES, route  # noqa: E402

from xt.kernels.moe import gg_triton  # noqa: E402

# (BM, BN, BK, stages, warps): tiles tried for every GEMM, each with the bulk-store epilogue
TILES = [(128, 256, 64, 3, 8), (128, 128, 64, 4, 8), (128, 128, 64, 3, 8), (128, 128, 64, 4, 4),
         (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (128, 128, 64, 2, 8)]
# (WS, maxnreg, FAST_SIG); FAST_SIG is for the SwiGLU epilogues only
SCHEDS = {"all": [(False, None, False), (True, None, False), (False, 128, False), (False, None, True),
                  (True, None, True)],
          "fastsig": [(False, None, False), (False, None, True)], "plain": [(False, None, False)]}
# smaller pipelines and BK = 32 (pick them with ``--tiles``)
TILES += [(64, 128, 64, 3, 4), (64, 256, 64, 3, 4), (64, 256, 64, 2, 4), (128, 128, 32, 4, 8), (128, 128, 32, 6, 8),
          (128, 256, 32, 4, 8), (256, 128, 64, 3, 8), (256, 128, 32, 5, 8), (128, 256, 32, 6, 8),
          (256, 64, 64, 4, 8)]


def problems(gen):
    """The six GEMMs of one forward+backward: name -> (kernel, args, fixed constexprs, N, rows)."""
    E, k, H, I, T = SHAPES["qwen3-30b-a3b"]
    R = T * k
    bf = dict(device="cuda", dtype=torch.bfloat16)
    x = torch.randn(R, H, generator=gen, **bf)
    w1 = torch.randn(E, 2 * I, H, generator=gen, **bf) * H ** -0.5
    w2 = torch.randn(E, H, I, generator=gen, **bf) * I ** -0.5
    gy = torch.randn(R, H, generator=gen, **bf)
    counts = route(T, E, k, "random", gen).to(torch.int32)
    gu, h = gg_triton.mgrouped_swiglu(x, w1, counts)
    dgu = gg_triton.mgrouped_dswiglu(gy, w2, gu, counts, False)
    m = dict(E_POW2=128, DOT_PREC="tf32")
    mk = gg_triton._mgrouped_kernel
    kk = gg_triton._kgrouped_kernel
    out = {
        "_operands": (x, w1, w2, gy, gu, h, dgu, counts),
        "gate_up+swiglu": (mk, (x, w1, torch.empty_like(h), torch.empty_like(gu), counts, R, I, H, E, 1024),
                           dict(m, B_TRANS=True, ACT=1), I, R),
        "down": (mk, (h, w2, torch.empty_like(x), None, counts, R, H, I, E, 1024), dict(m, B_TRANS=True, ACT=0), H, R),
        "dh+dswiglu": (mk, (gy, w2, torch.empty_like(gu), gu, counts, R, I, H, E, 1024),
                       dict(m, B_TRANS=False, ACT=2), I, R),
        "dx": (mk, (dgu, w1, torch.empty_like(x), None, counts, R, H, 2 * I, E, 1024),
               dict(m, B_TRANS=False, ACT=0), H, R),
        "dw_down": (kk, (gy, h, torch.empty_like(w2), counts, R, H, I, E, 1024), m, None, None),
        "dw_gate_up": (kk, (dgu, x, torch.empty_like(w1), counts, R, 2 * I, H, E, 1024), m,
                       None, None),
    }
    return out, (E, H, I, R)


def autotuned(probs) -> dict:
    """Time the autotuned entry points on the same operands and report the config each picked."""
    x, w1, w2, gy, gu, h, dgu, counts = probs["_operands"]
    calls = {"gate_up+swiglu": lambda: gg_triton.mgrouped_swiglu(x, w1, counts),
             "down": lambda: gg_triton.mgrouped(h, w2, counts, True),
             "dh+dswiglu": lambda: gg_triton.mgrouped_dswiglu(gy, w2, gu, counts, False),
             "dx": lambda: gg_triton.mgrouped(dgu, w1, counts, False),
             "dw_down": lambda: gg_triton.kgrouped(gy, h, counts),
             "dw_gate_up": lambda: gg_triton.kgrouped(dgu, x, counts)}
    out = {}
    from xt.kernels.moe import gg_torch
    calls["dw_down torch._grouped_mm"] = lambda: gg_torch.kgrouped(gy, h, counts)
    calls["dw_gate_up torch._grouped_mm"] = lambda: gg_torch.kgrouped(dgu, x, counts)
    for name, fn in calls.items():
        fn()
        out[name] = {"ms": bench_ms(fn)}
        print(f"autotuned {name:30s} {out[name]['ms']:.4f}", flush=True)
    for tuned in (gg_triton._mgrouped_tuned, gg_triton._kgrouped_tuned):
        for key, cfg in tuned.cache.items():
            print("picked", key, cfg, flush=True)
            out.setdefault("picked", []).append([str(key), str(cfg)])
    return out


def main(out_dir: str, only: list[str] | None, sched_set: str, tuned: bool) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(0)
    probs, (E, H, I, R) = problems(gen)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    res = {"env": env_info(), "ms": {}, "best": {}, "sched_set": sched_set}
    for name, prob in probs.items():
        if name.startswith("_") or (only and name not in only):
            continue
        kern, args, fixed, N, rows = prob
        res["ms"][name] = {}
        if args[3] is None:
            args = args[:3] + (args[2],) + args[4:]
        for bm, bn, bk, stages, warps in TILES:
            if fixed.get("ACT") == 1 and bn > 128:
                continue
            for ws, maxnreg, pref in SCHEDS[sched_set]:
                if pref and not fixed.get("ACT"):
                    continue
                if N is not None:
                    tiles = (triton.cdiv(rows, bm) + E) * triton.cdiv(N, bn)
                else:  # k-grouped: E blocks of [P, Q]
                    tiles = E * triton.cdiv(args[5], bm) * triton.cdiv(args[6], bn)
                grid = (min(sms, tiles),)
                kw = dict(fixed, BM=bm, BN=bn, BK=bk, GROUP_M=8, USE_TMA=True, EPI_TMA=True, WS=ws)
                if pref:
                    kw["FAST_SIG"] = True
                opts = dict(num_warps=warps, num_stages=stages)
                if maxnreg:
                    opts["maxnreg"] = maxnreg

                def launch(kw=kw, opts=opts, grid=grid):
                    kern[grid](*args, **kw, **opts)
                key = f"{bm}x{bn}x{bk} s{stages} w{warps}{' ws' if ws else ''}{f' reg{maxnreg}' if maxnreg else ''}{' fastsig' if pref else ''}"
                try:
                    launch()
                    res["ms"][name][key] = bench_ms(launch)
                except Exception as exc:  # a config the Triton build rejects: recorded, not fatal
                    res["ms"][name][key] = f"{type(exc).__name__}: {exc}"[:160]
                print(f"{name:16s} {key:40s} {res['ms'][name][key]}", flush=True)
        ok = {k: v for k, v in res["ms"][name].items() if isinstance(v, float)}
        if ok:
            best = min(ok, key=ok.get)
            res["best"][name] = [best, ok[best]]
            print(f"== {name}: best {best} {ok[best]:.4f} ms", flush=True)
    if tuned:
        res["autotuned"] = autotuned(probs)
    print("wrote", write_json(out_dir, "sched", res))
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated GEMM names")
    ap.add_argument("--sched", default="all", choices=sorted(SCHEDS))
    ap.add_argument("--tiles", default="", help="indices into TILES, comma-separated (default all)")
    ap.add_argument("--autotuned", action="store_true", help="also time the autotuned entry points")
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    if a.tiles:
        TILES[:] = [TILES[int(i)] for i in a.tiles.split(",")]
    main(a.out, [s for s in a.only.split(",") if s] or None, a.sched, a.autotuned)
