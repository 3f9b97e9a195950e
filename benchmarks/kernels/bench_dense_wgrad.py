"""Dense weight-gradient accumulation into fp32 main gradients: fused GEMM vs GEMM + add (H200).

For the dense projections of the 5.6B Qwen3-MoE (attention q/k/v/o, lm_head) at T tokens per
micro-batch, ``dW = dYᵀ X`` with bf16 operands added into an fp32 ``main_grad[N, K]``:

* ``mm + add``: ``dW`` in bf16 (cuBLAS), then ``main_grad += dW`` (the compiled flat add that
  `xt.core.engine.compute_weights` runs from a post-accumulate-grad hook);
* ``addmm fused``: ``torch.addmm(main_grad, dYᵀ, X, out_dtype=float32, out=main_grad)``: cuBLAS with
  beta = 1 accumulates from its fp32 accumulators into ``main_grad`` (no bf16 ``dW``, no add kernel).

Columns: GPU ms (CUDA events, median), host µs per call (enqueue time with the GPU kept busy), and
the largest difference of the fused result from a float64 reference relative to the unfused one's.

    python benchmarks/kernels/bench_dense_wgrad.py   # writes benchmarks/results/kernels-dense-wgrad-DATE.json
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import bench_ms, env_info, table, write_json  # noqa: E402

# (name, N out features, K in features)
SHAPES = [("q_proj", 4096, 2048), ("k_proj", 512, 2048), ("o_proj", 2048, 4096), ("lm_head", 151936, 2048)]


def _host_us(fn, n=50) -> float:
    torch.cuda.synchronize()
    torch.cuda._sleep(int(2e9))
    t = time.perf_counter()
    for _ in range(n):
        fn()
    dt = (time.perf_counter() - t) / n
    torch.cuda.synchronize()
    return dt * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--out-dir", default=os.environ.get("OUT") or os.path.join(os.path.dirname(__file__), "..", "results"))
    args = p.parse_args()
    from xt.core.engine.compute_weights import _add_into

    rows = []
    for T in args.tokens:
        for name, N, K in SHAPES:
            dy = torch.randn(T, N, device="cuda", dtype=torch.bfloat16)
            x = torch.randn(T, K, device="cuda", dtype=torch.bfloat16)
            g0 = torch.randn(N, K, device="cuda", dtype=torch.float32)
            ref = g0.double() + dy.double().t() @ x.double()
            acc = g0.clone()

            def unfused():
                _add_into(acc, dy.t() @ x)

            def fused():
                torch.addmm(acc, dy.t(), x, out_dtype=torch.float32, out=acc)
            row = {"T": T, "weight": name, "N": N, "K": K}
            for tag, fn in (("mm+add", unfused), ("addmm", fused)):
                try:
                    acc.copy_(g0)
                    fn()
                    row[f"{tag} err"] = float((acc.double() - ref).abs().max())
                    row[f"{tag} ms"] = bench_ms(fn)
                    row[f"{tag} host_us"] = _host_us(fn)
                except Exception as e:  # noqa: BLE001 - recorded: a build without the fused overload
                    row[f"{tag} error"] = f"{type(e).__name__}: {str(e)[:160]}"
            rows.append(row)
            print(row, flush=True)
    cols = ["T", "weight", "mm+add ms", "addmm ms", "mm+add host_us", "addmm host_us", "mm+add err", "addmm err"]
    print(table(rows, cols))
    print("wrote", write_json(args.out_dir, "dense-wgrad", {"env": env_info(), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
