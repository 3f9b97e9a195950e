"""GPU correctness checks of xt.kernels (run on the H200 before the benchmarks).

Each check compares against a float64 reference on the GPU and prints ``‖out−ref‖/‖ref‖``;
inputs are random and fresh per check. Also checks the zero weight-gradient of experts without
tokens when the caching allocator hands back NaN-filled memory, for our backends and for raw
``torch._grouped_mm``. Returns a dict of results (and prints a summary).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from xt.kernels.moe import backends, gg_op, gg_triton, grouped_gemm, permute, swiglu_experts, unpermute
from xt.kernels.moe.gg_triton_kernels import _sigmoid
from xt.kernels.loss import linear_cross_entropy


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("nan")
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _dirty(nbytes: int = 1 << 30) -> None:
    """Leave ``nbytes`` of NaN-filled blocks in the caching allocator."""
    blocks = [torch.full((nbytes // 8 // 4,), float("nan"), device="cuda") for _ in range(8)]
    del blocks


def check_grouped_gemm(out: dict) -> None:
    dev = "cuda"
    cases = [("zeros+odd", [37, 0, 129, 0, 1, 300, 0, 64]), ("one-takes-all", [0, 0, 513, 0, 0, 0, 0, 0]),
             ("R=0", [0] * 8)]
    for name, counts_l in cases:
        counts = torch.tensor(counts_l, device=dev)
        R, E, K, N = sum(counts_l), len(counts_l), 136, 200
        for dtype, backs in ((torch.bfloat16, ["triton", "torch", "auto", "triton/torch", "torch/triton"]),
                             (torch.float32, ["triton"])):
            for trans in (False, True):
                x = torch.randn(R, K, device=dev, dtype=dtype)
                w = torch.randn(E, N, K, device=dev, dtype=dtype) if trans else torch.randn(E, K, N, device=dev, dtype=dtype)
                dy = torch.randn(R, N, device=dev, dtype=dtype)
                x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
                ref = grouped_gemm(x64, w64, counts, trans, backend="reference")
                rdx, rdw = torch.autograd.grad(ref, (x64, w64), dy.double()) if R else (x64 * 0, w64 * 0)
                for b in backs:
                    xb, wb = x.clone().requires_grad_(), w.clone().requires_grad_()
                    try:
                        y = grouped_gemm(xb, wb, counts, trans, backend="auto") if b == "auto" else \
                            gg_op.grouped_mm(xb, wb, counts, trans, b)
                        _dirty()
                        dx, dw = torch.autograd.grad(y, (xb, wb), dy) if R else (xb * 0, wb * 0)
                        empty = [e for e, c in enumerate(counts_l) if c == 0]
                        zero_ok = bool((dw[empty] == 0).all()) if empty else True
                        res = {"y": rel(y, ref) if R else 0.0, "dx": rel(dx, rdx) if R else 0.0,
                               "dw": rel(dw, rdw) if R else 0.0, "empty_dw_exact_zero": zero_ok}
                    except Exception as exc:  # report and continue
                        res = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                    key = f"gg/{name}/{str(dtype)[6:]}/trans={trans}/{b}"
                    out[key] = res
                    print(key, res, flush=True)


def check_swiglu_experts(out: dict) -> None:
    """Fused SwiGLU experts (bf16) vs the float64 reference: forward, dx, both weight gradients,
    and exact-zero weight gradients of empty experts over NaN-filled allocator blocks."""
    D, F = 264, 200  # partial column tiles in both epilogues
    for name, counts_l in (("zeros+odd", [37, 0, 129, 0, 1, 300, 0, 64]), ("one-takes-all", [0, 0, 513, 0]),
                           ("R=0", [0] * 4)):
        counts = torch.tensor(counts_l, device="cuda")
        R, E = sum(counts_l), len(counts_l)
        x = torch.randn(R, D, device="cuda", dtype=torch.bfloat16)
        w1 = torch.randn(E, 2 * F, D, device="cuda", dtype=torch.bfloat16) * D ** -0.5
        w2 = torch.randn(E, D, F, device="cuda", dtype=torch.bfloat16) * F ** -0.5
        dy = torch.randn(R, D, device="cuda", dtype=torch.bfloat16)
        ref_in = [t.double().requires_grad_() for t in (x, w1, w2)]
        ref = swiglu_experts(*ref_in, counts, backend="reference")
        ref_g = torch.autograd.grad(ref, ref_in, dy.double()) if R else [t * 0 for t in ref_in]
        for b in ("triton", "torch", "auto"):
            ins = [t.clone().requires_grad_() for t in (x, w1, w2)]
            try:
                y = swiglu_experts(*ins, counts, backend=b)
                _dirty()
                g = torch.autograd.grad(y, ins, dy) if R else [t * 0 for t in ins]
                empty = [e for e, c in enumerate(counts_l) if c == 0]
                res = {"y": rel(y, ref) if R else 0.0,
                       **{k: (rel(a, r) if R else 0.0) for k, a, r in zip(("dx", "dw1", "dw2"), g, ref_g)},
                       "empty_dw_exact_zero": bool((g[1][empty] == 0).all() and (g[2][empty] == 0).all())}
            except Exception as exc:
                res = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            key = f"swiglu_experts/{name}/{b}"
            out[key] = res
            print(key, res, flush=True)


@triton.jit
def _sigmoid_kernel(x_ptr, y_ptr, n, FAST_SIG: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    tl.store(y_ptr + offs, _sigmoid(x, FAST_SIG), mask=offs < n)


def check_fast_sigmoid(out: dict) -> None:
    """Largest absolute error of the SwiGLU epilogues' sigmoid (``tanh.approx`` and ``tl.sigmoid``)
    against float64 over 2^22 points of [-30, 30], next to half a bf16 ulp of the result."""
    x = torch.linspace(-30, 30, 1 << 22, device="cuda", dtype=torch.float32)
    ref = torch.sigmoid(x.double())
    for fast in (True, False):
        y = torch.empty_like(x)
        _sigmoid_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), FAST_SIG=fast, BLOCK=1024)
        out[f"sigmoid/fast={fast}"] = {"max_abs_err": float((y.double() - ref).abs().max()),
                                       "max_rel_err": float(((y.double() - ref).abs() / ref).max())}
        print(f"sigmoid/fast={fast}", out[f"sigmoid/fast={fast}"], flush=True)
    out["sigmoid/bf16_half_ulp_at_0.5"] = 2.0 ** -10


def check_raw_grouped_mm_empty(out: dict) -> None:
    """Does raw torch._grouped_mm write zeros for an empty group in the k-grouped (dW) form?"""
    counts = torch.tensor([64, 0, 64, 0], device="cuda")
    offs = torch.cumsum(counts, 0, dtype=torch.int32)
    a = torch.randn(128, 256, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(128, 512, device="cuda", dtype=torch.bfloat16)
    _dirty()
    c = torch._grouped_mm(a.t(), b, offs=offs)
    out["raw_grouped_mm_empty_group_zero"] = {"finite": bool(torch.isfinite(c).all()),
                                              "zero": bool((c[[1, 3]] == 0).all())}
    print("raw torch._grouped_mm k-grouped empty groups:", out["raw_grouped_mm_empty_group_zero"], flush=True)


def select_configs(out: dict) -> None:
    """Run one fixed config of every (USE_TMA, EPI_TMA, WS) variant of both Triton GEMM kernels on a
    problem with an empty expert and partial tiles; drop the autotuning candidates of variants that
    fail to compile or compute wrongly on this Triton build."""
    counts = torch.tensor([100, 0, 300, 57], device="cuda", dtype=torch.int32)
    R, K, N = 457, 256, 384
    x = torch.randn(R, K, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(4, N, K, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn(R, N, device="cuda", dtype=torch.bfloat16)
    ref_y = gg_op.grouped_mm(x.double(), w.double(), counts, True, "loop")
    ref_w = gg_op.kernel_set("loop").kgrouped(dy.double(), x.double(), counts)
    gg_triton.ensure_allocator(x.device)
    for kind, tuner in (("m", gg_triton._mgrouped_tuned), ("k", gg_triton._kgrouped_tuned)):
        keep, seen = [], {}
        for cfg in tuner.configs:
            kw = dict(cfg.kwargs)
            flags = (kw["USE_TMA"], kw["EPI_TMA"], kw["WS"], kw["BM"] < 128)
            if flags not in seen:
                try:
                    if kind == "m":
                        y = torch.full((R, N), float("nan"), device="cuda", dtype=torch.bfloat16)
                        gg_triton._mgrouped_kernel[(132,)](x, w, y, y, counts, R, N, K, 4, 128, B_TRANS=True, E_POW2=4,
                                                           DOT_PREC="tf32", num_warps=cfg.num_warps,
                                                           num_stages=cfg.num_stages, **kw)
                        err = rel(y, ref_y)
                    else:
                        c = torch.full((4, N, K), float("nan"), device="cuda", dtype=torch.bfloat16)
                        gg_triton._kgrouped_kernel[(132,)](dy, x, c, counts, R, N, K, 4, 128, E_POW2=4,
                                                           DOT_PREC="tf32", num_warps=cfg.num_warps,
                                                           num_stages=cfg.num_stages, **kw)
                        err = rel(c, ref_w)
                    seen[flags] = err
                except Exception as exc:
                    seen[flags] = f"{type(exc).__name__}: {exc}"[:300]
                print(f"{kind}grouped variant tma/epi/ws/small={flags}: {seen[flags]}", flush=True)
            ok = isinstance(seen[flags], float) and seen[flags] < 1e-2
            if ok:
                keep.append(cfg)
        out[f"{kind}grouped_variants"] = {str(k): v for k, v in seen.items()}
        tuner.configs = keep or tuner.configs[:1]


def check_permute(out: dict) -> None:
    T, K, D, E = 1000, 4, 264, 16
    x = torch.randn(T, D, device="cuda", dtype=torch.bfloat16)
    ids = torch.randint(0, E, (T, K), device="cuda")
    wts = torch.rand(T, K, device="cuda")
    g = torch.randn(T, D, device="cuda", dtype=torch.bfloat16)
    res = {}
    for b in ("reference", "triton"):
        xb, wb = x.clone().requires_grad_(), wts.clone().requires_grad_()
        xs, info = permute(xb, ids, E, backend=b)
        y = unpermute(xs * 1.5, info, wb, backend=b)
        res[b] = (xs, y, *torch.autograd.grad(y, (xb, wb), g))
    out["permute"] = [rel(a, r) for a, r in zip(res["triton"], res["reference"])]
    print("permute triton vs reference (xs, y, dx, dw):", out["permute"], flush=True)


def check_loss(out: dict) -> None:
    T, D, V = 777, 256, 5000
    h = torch.randn(T, D, device="cuda") * 0.5
    W = torch.randn(V, D, device="cuda") * 0.05
    lab = torch.randint(0, V, (T,), device="cuda")
    lab[::7] = -100
    h64, W64 = h.double().requires_grad_(), W.double().requires_grad_()
    ref = linear_cross_entropy(h64, W64, lab, reduction="mean", z_loss_coef=1e-4, backend="reference")
    rg = torch.autograd.grad(ref, (h64, W64))
    for b, dt in (("torch", torch.float32), ("triton", torch.float32), ("triton", torch.bfloat16)):
        hb, Wb = h.to(dt).requires_grad_(), W.to(dt).requires_grad_()
        loss = linear_cross_entropy(hb, Wb, lab, reduction="mean", z_loss_coef=1e-4, chunk_size=256, backend=b)
        g = torch.autograd.grad(loss, (hb, Wb))
        key = f"loss/{b}/{str(dt)[6:]}"
        out[key] = {"loss": abs(loss.item() - ref.item()) / abs(ref.item()), "dh": rel(g[0], rg[0]), "dW": rel(g[1], rg[1])}
        print(key, out[key], flush=True)


def run() -> dict:
    out: dict = {}
    for fn in (select_configs, check_raw_grouped_mm_empty, check_grouped_gemm, check_fast_sigmoid,
               check_swiglu_experts, check_permute, check_loss):
        try:
            fn(out)
        except Exception as exc:
            out[fn.__name__] = f"FAILED {type(exc).__name__}: {exc}"[:500]
            print(fn.__name__, out[fn.__name__], flush=True)
    out["auto_choices"] = {str(k): v for k, v in backends.auto_choices().items()}
    return out


if __name__ == "__main__":
    run()
