"""Independent float64 references for the kernel tests (formulas, not the code under test)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def grouped_gemm_f64(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor, trans_b: bool) -> torch.Tensor:
    """``y[r] = x[r] @ B[e(r)]`` via a per-row gather of the expert weights and ``bmm`` (float64)."""
    E = w.shape[0]
    expert_of_row = torch.repeat_interleave(torch.arange(E), counts.cpu())
    b = w.double()[expert_of_row]
    if trans_b:
        b = b.transpose(-2, -1)
    return torch.bmm(x.double()[:, None, :], b)[:, 0, :]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``‖a − b‖ / ‖b‖`` in float64 (0 when both are empty or ``b`` is zero and ``a`` equals it)."""
    a, b = a.double(), b.double()
    if b.numel() == 0:
        return 0.0
    nb = b.norm()
    return float((a - b).norm().detach() / nb.detach()) if nb > 0 else float((a - b).norm().detach())


def counts_strategy(st, max_experts: int = 6, max_count: int = 9):
    """Hypothesis strategy of per-expert counts: zeros, odd sizes, one expert taking all, R = 0."""
    plain = st.lists(st.integers(0, max_count), min_size=1, max_size=max_experts)
    one_takes_all = st.tuples(st.integers(1, max_experts), st.integers(0, max_experts - 1),
                              st.integers(1, 3 * max_count)).map(
        lambda t: [t[2] if i == t[1] % t[0] else 0 for i in range(t[0])])
    return st.one_of(plain, one_takes_all)


def swiglu_experts_f64(x, w1, w2, counts):
    """``(silu(x W_gᵀ) * (x W_uᵀ)) W_downᵀ`` per row's expert, in float64."""
    gate_up = grouped_gemm_f64(x, w1, counts, True)
    g, u = gate_up.chunk(2, dim=-1)
    return grouped_gemm_f64(F.silu(g) * u, w2, counts, True)


def swiglu_experts_inputs(counts, d, f, dtype, seed):
    """``([x[R, d], w_gate_up[E, 2f, d], w_down[E, d, f]] as leaves of ``dtype``, dy[R, d])``."""
    g = torch.Generator().manual_seed(seed)
    E, R = len(counts), sum(counts)
    x = torch.randn(R, d, generator=g, dtype=torch.float64)
    w1 = torch.randn(E, 2 * f, d, generator=g, dtype=torch.float64) / d ** 0.5
    w2 = torch.randn(E, d, f, generator=g, dtype=torch.float64) / f ** 0.5
    dy = torch.randn(R, d, generator=g, dtype=torch.float64)
    return [t.to(dtype).requires_grad_() for t in (x, w1, w2)], dy.to(dtype)


def check_swiglu_experts_f64(y, params, counts, dy, tol):
    """Forward and all three gradients of ``y = f(*params)`` vs the float64 formula."""
    c = torch.tensor(counts)
    ref_params = [p.detach().double().requires_grad_() for p in params]
    yr = swiglu_experts_f64(*ref_params, c)
    assert y.shape == yr.shape and rel(y, yr) <= tol
    if yr.shape[0] == 0:
        return
    grads = torch.autograd.grad(y, params, dy)
    ref_grads = torch.autograd.grad(yr, ref_params, dy.double())
    for name, a, r in zip(("dx", "dw_gate_up", "dw_down"), grads, ref_grads):
        assert rel(a, r) <= tol, name
    empty = [e for e, n in enumerate(counts) if n == 0]
    assert bool((grads[1][empty] == 0).all()) and bool((grads[2][empty] == 0).all())
