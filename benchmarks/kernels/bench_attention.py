"""Packed document-causal attention, forward + backward, on the GPU: which kernel, and its host cost.

Shape legend: T packed tokens, H = 32 query heads, G = 4 key/value heads, D = 128 (the 5.6B
Qwen3-MoE of benchmarks/train). For each T and document split, times one forward + backward of:

* ``varlen``: ``torch.nn.attention.varlen.varlen_attn`` (flash, what ``CoreAttention("auto")`` used);
* ``flash-direct``: aten's ``_flash_attention_forward/backward`` in our own autograd Function (the
  same kernels without the wrapper op: `xt.models.common.core_attention`'s ``"flash"`` path);
* ``cudnn`` / ``cudnn-rep`` (only with ``XT_BENCH_CUDNN_RAGGED=1``): aten's
  ``_cudnn_attention_forward`` (and its derivative) on the ragged (``cum_seq``) layout, with native or
  repeated kv heads. On torch 2.11 / cuDNN 9.19 its dq was wrong (max error ~4e8) and a call took
  ~150 ms, so XT does not use it;
* ``sdpa-cudnn-docs`` / ``sdpa-flash-docs``: one 4-D causal SDPA call per document on the cuDNN or
  flash backend (host-side boundaries).

Columns: GPU milliseconds (CUDA events, median), host microseconds per call (the Python/dispatch time
to enqueue forward + backward, measured with the GPU kept busy; for the per-document loops over
several documents the launch queue fills and this includes waiting), TFLOP/s
(causal flops: 4 * sum(n_i^2 / 2) * H * D * 3.5 for forward + backward), and the largest
difference of the output and of dq against ``varlen``.

    python benchmarks/kernels/bench_attention.py   # writes benchmarks/results/kernels-attention-DATE.json
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import bench_ms, env_info, table, write_json  # noqa: E402

H, G, D = 32, 4, 128
# (T, document lengths): one document, and a packing of several
CASES = [(4096, [4096]), (4096, [1500, 1100, 900, 596]), (16384, [16384]), (16384, [6000, 5000, 3000, 2384]),
         (65536, [65536])]


def _inputs(T, lens, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(T, H, D, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    k = torch.randn(T, G, D, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    v = torch.randn(T, G, D, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0).tolist()), device="cuda", dtype=torch.int32)
    dout = torch.randn(T, H, D, device="cuda", dtype=torch.bfloat16, generator=g)
    return q, k, v, cu, max(lens), dout


def _varlen(q, k, v, cu, mx, scale):
    import inspect

    from torch.nn.attention.varlen import varlen_attn
    if "enable_gqa" in inspect.signature(varlen_attn).parameters:
        return varlen_attn(q, k, v, cu, cu, mx, mx, scale=scale, window_size=(-1, 0), enable_gqa=True)
    r = H // G  # torch 2.11's varlen_attn has no enable_gqa: repeat the kv heads (what XT did before)
    k, v = k.repeat_interleave(r, 1), v.repeat_interleave(r, 1)
    return varlen_attn(q, k, v, cu, cu, mx, mx, scale=scale, window_size=(-1, 0))


def _flash_direct(q, k, v, cu, mx, scale):
    from xt.models.common.flash_varlen import flash_varlen
    return flash_varlen(q, k, v, cu, mx, scale)


def _cudnn(q, k, v, cu, mx, scale):
    # the op's own derivative (derivatives.yaml) runs _cudnn_attention_backward
    return torch.ops.aten._cudnn_attention_forward(q, k, v, None, cu, cu, mx, mx, True, 0.0, True, False,
                                                   scale=scale)[0]


def _cudnn_rep(q, k, v, cu, mx, scale):
    r = H // G
    return _cudnn(q, k.repeat_interleave(r, 1), v.repeat_interleave(r, 1), cu, mx, scale)


def _sdpa_docs(q, k, v, cu, mx, scale, backend):
    """One 4-D SDPA call per document (host boundaries) on one SDPA backend, GQA native."""
    from torch.nn.attention import sdpa_kernel
    outs = []
    bounds = _sdpa_docs.bounds
    with sdpa_kernel(backend):
        for s, e in zip(bounds[:-1], bounds[1:]):
            qd, kd, vd = (t[s:e].transpose(0, 1)[None] for t in (q, k, v))
            outs.append(torch.nn.functional.scaled_dot_product_attention(
                qd, kd, vd, is_causal=True, scale=scale, enable_gqa=True)[0].transpose(0, 1))
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def _sdpa_cudnn(q, k, v, cu, mx, scale):
    from torch.nn.attention import SDPBackend
    return _sdpa_docs(q, k, v, cu, mx, scale, SDPBackend.CUDNN_ATTENTION)


def _sdpa_flash(q, k, v, cu, mx, scale):
    from torch.nn.attention import SDPBackend
    return _sdpa_docs(q, k, v, cu, mx, scale, SDPBackend.FLASH_ATTENTION)


KERNELS = {"varlen": _varlen, "flash-direct": _flash_direct, "sdpa-cudnn-docs": _sdpa_cudnn,
           "sdpa-flash-docs": _sdpa_flash}
if os.environ.get("XT_BENCH_CUDNN_RAGGED"):  # measured once on torch 2.11: wrong dq, ~150 ms per call
    KERNELS.update({"cudnn": _cudnn, "cudnn-rep": _cudnn_rep})


def _host_us(fn, q, k, v, cu, mx, scale, dout, n=50) -> float:
    """Host time to enqueue forward + backward, with a long GPU sleep queued first so no launch waits."""
    torch.cuda.synchronize()
    torch.cuda._sleep(int(2e9))  # ~1 s of GPU cycles ahead of the launches
    t = time.perf_counter()
    for _ in range(n):
        out = fn(q, k, v, cu, mx, scale)
        out.backward(dout)
    dt = (time.perf_counter() - t) / n
    torch.cuda.synchronize()
    return dt * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default=os.environ.get("OUT") or os.path.join(os.path.dirname(__file__), "..", "results"))
    args = p.parse_args()
    scale = D ** -0.5
    rows = []
    for T, lens in CASES:
        q, k, v, cu, mx, dout = _inputs(T, lens)
        _sdpa_docs.bounds = cu.tolist()
        flops = 4 * sum(n * n / 2 for n in lens) * H * D * 3.5
        ref = None
        for name, fn in KERNELS.items():
            row = {"T": T, "docs": len(lens), "kernel": name}
            try:
                def step():
                    q.grad = k.grad = v.grad = None
                    fn(q, k, v, cu, mx, scale).backward(dout)
                step()
                out = fn(q, k, v, cu, mx, scale).detach().float()
                q.grad = None
                fn(q, k, v, cu, mx, scale).backward(dout)
                dq = q.grad.float()
                if ref is None:
                    ref = (out, dq)
                row["max|dout|"] = float((out - ref[0]).abs().max())
                row["max|ddq|"] = float((dq - ref[1]).abs().max())
                ms = bench_ms(step)
                row["gpu_ms"] = ms
                row["TFLOP/s"] = flops / ms / 1e9
                row["host_us"] = _host_us(fn, q, k, v, cu, mx, scale, dout)
            except Exception as e:  # noqa: BLE001 - a kernel this build rejects is recorded, not fatal
                import traceback
                row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                if T == CASES[0][0] and len(lens) == 1:
                    traceback.print_exc()
            rows.append(row)
            print(row, flush=True)
    print(table(rows, ["T", "docs", "kernel", "gpu_ms", "TFLOP/s", "host_us", "max|dout|", "max|ddq|", "error"]))
    print("wrote", write_json(args.out_dir, "attention", {"env": env_info(), "H": H, "G": G, "D": D, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
