"""Expert weight-gradient accumulation into fp32 main gradients: fused vs separate (H200).

For each MoE shape (routed rows R = tokens x top-k, E experts, the [E, P, Q] gradient blocks of the
gate/up and down projections) times, per micro-batch:

* ``torch + add``: ``torch._grouped_mm`` (CUTLASS) dW in bf16, then ``main_grad += dW`` (the compiled
  flat add `ComputeWeights` uses; what a step did before the fused path);
* ``triton + add``: the Triton k-grouped kernel in bf16, then the same add;
* ``triton fused``: ``kgrouped(..., out=main_grad)``, the fp32 accumulate in the kernel's epilogue.

Prints a table, writes ``benchmarks/results/kernels-wgrad-accum-DATE.json`` (or ``--out-dir``).

    python benchmarks/kernels/bench_wgrad_accum.py
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import bench_ms, env_info, write_json  # noqa: E402

# (name, tokens, top_k, E, hidden, moe_intermediate)
SHAPES = [("qwen3-moe-5.6b 4k", 4096, 8, 128, 2048, 768), ("qwen3-moe-5.6b 16k", 16384, 8, 128, 2048, 768)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default=os.environ.get("OUT") or os.path.join(os.path.dirname(__file__), "..", "results"))
    args = p.parse_args()
    from xt.core.engine.compute_weights import _add_into
    from xt.kernels.moe import gg_torch, gg_triton

    rows = []
    for name, T, k, E, D, F in SHAPES:
        R = T * k
        counts = torch.distributions.Multinomial(R, torch.ones(E)).sample().to(torch.int32).cuda()
        for proj, P, Q in (("gate_up", 2 * F, D), ("down", D, F)):
            a = torch.randn(R, P, device="cuda", dtype=torch.bfloat16)
            b = torch.randn(R, Q, device="cuda", dtype=torch.bfloat16)
            main = torch.zeros(E, P, Q, device="cuda")
            ref = gg_torch.kgrouped(a, b, counts).float()
            main.zero_()
            gg_triton.kgrouped(a, b, counts, out=main)
            err = float((main - ref).abs().max() / ref.abs().max())
            t = {"torch + add": bench_ms(lambda: _add_into(main, gg_torch.kgrouped(a, b, counts))),
                 "triton + add": bench_ms(lambda: _add_into(main, gg_triton.kgrouped(a, b, counts))),
                 "triton fused": bench_ms(lambda: gg_triton.kgrouped(a, b, counts, out=main))}
            rows.append({"shape": name, "proj": proj, "R": R, "E": E, "P": P, "Q": Q, "ms": t,
                         "fused_vs_bf16_max_rel": err})
            print(f"{name:22s} {proj:8s} " + "  ".join(f"{k} {v:7.3f} ms" for k, v in t.items())
                  + f"  (fused vs bf16 dW: max rel {err:.1e})", flush=True)
    path = write_json(args.out_dir, "wgrad-accum", {"env": env_info(), "rows": rows})
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
