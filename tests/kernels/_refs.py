"""Independent float64 references for the kernel tests (formulas, not the code under test)."""
from __future__ import annotations

import torch


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
