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


def lm_head_log_probs_f64(h, W, labels, temperature=1.0, ignore_index=-100):
    """``(log p(label) [T], entropy [T])`` from the full float64 logits ``h Wᵀ / temperature`` with
    ``torch.log_softmax``; both 0 where ``labels == ignore_index``."""
    logp_all = torch.log_softmax((h.double() @ W.double().t()) / temperature, dim=-1)
    valid = labels != ignore_index
    logp = logp_all.gather(1, torch.where(valid, labels, 0)[:, None])[:, 0]
    ent = -(logp_all.exp() * logp_all).sum(-1)
    zero = logp.new_zeros(())
    return torch.where(valid, logp, zero), torch.where(valid, ent, zero)


def check_log_probs_f64(h, W, labels, temperature, result, tol, grad_tol=None, seed=0):
    """``result`` (a ``TokenLogProbs`` of leaves ``h``, ``W``, any device) against
    :func:`lm_head_log_probs_f64` on the CPU: float32 values, zeros on ignored tokens, and the
    gradients w.r.t. ``h`` and ``W`` of ``Σ g₁·log_probs + Σ g₂·entropy`` for random upstream
    ``g₁, g₂`` (``g₂`` only with an entropy), relative error ``tol`` (values) and ``grad_tol``
    (gradients; default ``tol``)."""
    grad_tol = tol if grad_tol is None else grad_tol
    labels = labels.cpu()
    hr, Wr = h.detach().cpu().double().requires_grad_(), W.detach().cpu().double().requires_grad_()
    refs = lm_head_log_probs_f64(hr, Wr, labels, temperature)
    outs = (result.log_probs,) if result.entropy is None else tuple(result)
    g = torch.Generator().manual_seed(seed)
    out = ref = 0.0
    for got, want in zip(outs, refs):
        assert got.dtype == torch.float32 and got.shape == labels.shape
        assert rel(got.cpu(), want) <= tol
        assert bool((got.cpu()[labels == -100] == 0).all())
        up = torch.randn(labels.shape, generator=g).double()  # float32 values: the outputs' grads are float32
        out = out + (got.double() * up.to(got.device)).sum()
        ref = ref + (want * up).sum()
    gh, gW = torch.autograd.grad(out, (h, W))
    rh, rW = torch.autograd.grad(ref, (hr, Wr))
    assert rel(gh.cpu(), rh) <= grad_tol and rel(gW.cpu(), rW) <= grad_tol
