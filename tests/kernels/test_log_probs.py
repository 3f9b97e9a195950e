"""Per-token outputs of the fused LM head (torch backend, CPU) vs full float64 logits.

``linear_log_probs`` (log p(label), entropy, temperature) and ``linear_cross_entropy(reduction=
"none")`` against ``torch.log_softmax`` / ``F.cross_entropy`` of the materialised logits: values,
ignored tokens, gradients w.r.t. hidden and weight for random ``[T]`` upstream gradients, chunk
sizes that do not divide T, no ``[T, V]`` tensor ever allocated, dispatch and argument errors.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from _refs import check_log_probs_f64, lm_head_log_probs_f64, rel
from xt.kernels.loss import TokenLogProbs, linear_cross_entropy, linear_log_probs
from xt.kernels.moe import backends


def _inputs(T, D, V, seed, ignore_frac=0.3, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(T, D, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_()
    W = torch.randn(V, D, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    labels = torch.randint(0, V, (T,), generator=g)
    labels[torch.rand(T, generator=g) < ignore_frac] = -100
    return h, W, labels


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 23), D=st.integers(1, 9), V=st.integers(2, 31), chunk=st.integers(1, 8),
       temperature=st.sampled_from([1.0, 0.5, 2.3]), entropy=st.booleans(),
       ignore_frac=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 2**16))
def test_log_probs_match_full_logits_float64(T, D, V, chunk, temperature, entropy, ignore_frac, seed):
    h, W, labels = _inputs(T, D, V, seed, ignore_frac)
    r = linear_log_probs(h, W, labels, temperature=temperature, return_entropy=entropy, chunk_size=chunk,
                         backend="torch")
    assert isinstance(r, TokenLogProbs) and (r.entropy is None) == (not entropy)
    check_log_probs_f64(h, W, labels, temperature, r, tol=1e-6, grad_tol=1e-10, seed=seed)


@settings(max_examples=20, deadline=None)
@given(T=st.integers(1, 23), D=st.integers(1, 9), V=st.integers(2, 31), chunk=st.integers(1, 8),
       z=st.sampled_from([0.0, 1e-2]), ignore_frac=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 2**16))
def test_reduction_none_matches_full_logits_float64(T, D, V, chunk, z, ignore_frac, seed):
    h, W, labels = _inputs(T, D, V, seed, ignore_frac)
    loss, zl = linear_cross_entropy(h, W, labels, reduction="none", z_loss_coef=z, chunk_size=chunk,
                                    return_z_loss=True, backend="torch")
    logits = h @ W.t()
    valid = labels != -100
    rz = z * torch.logsumexp(logits, -1) ** 2 * valid
    ref = F.cross_entropy(logits, labels, ignore_index=-100, reduction="none") + rz
    assert loss.dtype == torch.float32 and loss.shape == (T,) and not zl.requires_grad
    assert rel(loss, ref) <= 1e-6 and rel(zl, rz) <= 1e-6 and bool((loss[~valid] == 0).all())
    up = torch.randn(T, generator=torch.Generator().manual_seed(seed)).double()  # float32 values, as loss
    got = torch.autograd.grad((loss.double() * up).sum(), (h, W))
    want = torch.autograd.grad((ref * up).sum(), (h, W))
    assert rel(got[0], want[0]) <= 1e-10 and rel(got[1], want[1]) <= 1e-10
    total = linear_cross_entropy(h, W, labels, reduction="sum", z_loss_coef=z, backend="torch")
    assert abs(loss.double().sum().item() - total.item()) <= 1e-5 * max(1.0, abs(total.item()))


def test_reduction_none_is_minus_log_probs_and_matches_reference_backend():
    h, W, labels = _inputs(40, 12, 50, seed=1, dtype=torch.float32)
    none = linear_cross_entropy(h, W, labels, reduction="none", chunk_size=16, backend="torch")
    lp = linear_log_probs(h, W, labels, chunk_size=7, backend="torch").log_probs
    assert rel(none, -lp) <= 1e-6
    ref = linear_cross_entropy(h, W, labels, reduction="none", backend="reference")
    assert rel(none, ref) <= 1e-5


def test_torch_and_reference_backends_agree():
    h, W, labels = _inputs(40, 12, 50, seed=1, dtype=torch.float32)
    for tau, ent in ((1.0, False), (0.6, True)):
        a = linear_log_probs(h, W, labels, temperature=tau, return_entropy=ent, chunk_size=9, backend="torch")
        b = linear_log_probs(h, W, labels, temperature=tau, return_entropy=ent, backend="reference")
        for x, y in zip(a, b):
            assert (x is None and y is None) or rel(x, y) <= 1e-5


def test_entropy_is_stable_for_large_logits():
    """Logits of magnitude ~1e3 in float32: entropy stays finite, >= 0 and matches float64."""
    h, W, labels = _inputs(16, 8, 64, seed=5, dtype=torch.float32, scale=300.0, ignore_frac=0.0)
    r = linear_log_probs(h, W, labels, return_entropy=True, chunk_size=5, backend="torch")
    logp, ent = lm_head_log_probs_f64(h.detach(), W.detach(), labels)
    assert torch.isfinite(r.entropy).all() and bool((r.entropy >= 0).all())
    assert (r.entropy.double() - ent).abs().max() <= 1e-3 and rel(r.log_probs, logp) <= 1e-5


def test_chunk_size_does_not_change_results():
    h, W, labels = _inputs(37, 6, 29, seed=2)
    up = torch.randn(37).double()
    outs = []
    for chunk in (1, 5, 37, 100):
        r = linear_log_probs(h, W, labels, temperature=0.8, return_entropy=True, chunk_size=chunk, backend="torch")
        outs.append((r.log_probs, r.entropy, *torch.autograd.grad(((r.log_probs + r.entropy) * up).sum(), (h, W))))
    for other in outs[1:]:
        for a, b in zip(other, outs[0]):
            assert rel(a, b) <= 1e-12


class _LargestOutput(TorchDispatchMode):
    """Records the element count of the largest tensor any op produces while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("op", ["log_probs", "none"])
def test_never_allocates_full_logits(op):
    """Forward and backward with chunk < T: no op output reaches T·V elements (the biggest are one
    [chunk, V] block, weight [V, D] and hidden [T, D]); the reference backend does (the probe works)."""
    T, D, V, chunk = 64, 4, 50, 8
    h, W, labels = _inputs(T, D, V, seed=3, dtype=torch.float32)
    up = torch.randn(T)

    def run(backend):
        if op == "none":
            out = linear_cross_entropy(h, W, labels, reduction="none", chunk_size=chunk, backend=backend)
        else:
            r = linear_log_probs(h, W, labels, temperature=0.7, return_entropy=True, chunk_size=chunk,
                                 backend=backend)
            out = r.log_probs + r.entropy
        torch.autograd.grad((out * up).sum(), (h, W))

    with _LargestOutput() as probe:
        run("torch")
    assert probe.largest <= max(chunk * V, V * D, T * D) < T * V
    with _LargestOutput() as probe:
        run("reference")
    assert probe.largest >= T * V


def test_no_grad_frozen_weight_and_empty_input():
    h, W, labels = _inputs(9, 4, 11, seed=4)
    W = W.detach()
    with torch.no_grad():
        r = linear_log_probs(h, W, labels, return_entropy=True, backend="torch")
    assert not r.log_probs.requires_grad
    r = linear_log_probs(h, W, labels, return_entropy=True, chunk_size=4, backend="torch")
    (gh,) = torch.autograd.grad((r.log_probs - r.entropy).sum(), (h,))
    hr = h.detach().requires_grad_()
    lp, ent = lm_head_log_probs_f64(hr, W, labels)
    (rh,) = torch.autograd.grad((lp - ent).sum(), (hr,))
    assert rel(gh, rh) <= 1e-10
    e = linear_log_probs(torch.zeros(0, 4, dtype=torch.float64), W, torch.zeros(0, dtype=torch.int64),
                         return_entropy=True, backend="torch")
    assert e.log_probs.shape == (0,) and e.entropy.shape == (0,)


def test_under_autocast_matches_autocast_reference():
    """CPU bf16 autocast: the head product runs in bf16 (forward and the backward's recomputation),
    gradients come back float32, close to the same computation with full logits."""
    h, W, labels = _inputs(37, 16, 101, seed=0, dtype=torch.float32)
    up = torch.randn(37, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = (h @ W.t()).float() / 0.9
    lp_all = torch.log_softmax(logits, -1)
    valid = labels != -100
    ref = torch.where(valid, lp_all.gather(1, labels.clamp(min=0)[:, None])[:, 0], 0.0)
    ref_grads = torch.autograd.grad((ref * up).sum(), (h, W))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_log_probs(h, W, labels, temperature=0.9, chunk_size=8, backend="torch").log_probs
    grads = torch.autograd.grad((got * up).sum(), (h, W))
    assert got.dtype == torch.float32 and rel(got, ref) < 1e-2
    for a, b in zip(grads, ref_grads):
        assert a.dtype == torch.float32 and rel(a, b) < 2e-2


def test_process_wide_loss_backend_selects_log_probs_too():
    saved = {op: backends.get_backend(op) for op in backends.OPS}
    try:
        backends.set_backend("loss", "reference")
        assert backends.get_backend("log_probs") == "reference"
        h, W, labels = _inputs(6, 3, 7, seed=6)

        class Boom(TorchDispatchMode):  # the reference materialises [T, V] in one mm: see it happen
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if isinstance(out, torch.Tensor) and out.shape == (6, 7):
                    raise RuntimeError("full logits")
                return out
        with Boom(), pytest.raises(RuntimeError, match="full logits"):
            linear_log_probs(h, W, labels)
        with Boom():
            linear_log_probs(h, W, labels, chunk_size=2, backend="torch")
    finally:
        for op, name in saved.items():
            backends.set_backend(op, name)


def test_bad_arguments_raise_value_errors_naming_them():
    h, W, labels = _inputs(3, 4, 5, seed=0, dtype=torch.float32)
    for t in (0.0, -1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="temperature"):
            linear_log_probs(h, W, labels, temperature=t, backend="torch")
    for c in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            linear_log_probs(h, W, labels, chunk_size=c, backend="torch")
        for reduction in ("none", "sum"):
            with pytest.raises(ValueError, match="chunk_size"):
                linear_cross_entropy(h, W, labels, reduction=reduction, chunk_size=c, backend="torch")
    with pytest.raises(ValueError, match="labels"):
        linear_log_probs(h, W, labels.float(), backend="torch")
    with pytest.raises(ValueError, match="labels"):
        linear_log_probs(h, W, labels[:2], backend="torch")
    with pytest.raises(ValueError, match="weight"):
        linear_log_probs(h, W.double(), labels, backend="torch")
    with pytest.raises(ValueError, match="weight"):
        linear_log_probs(h, W[:, :3], labels, backend="torch")
    with pytest.raises(ValueError, match="unknown backend"):
        linear_log_probs(h, W, labels, backend="cudnn")
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(h, W, labels, reduction="per_token")
    with pytest.raises(ValueError, match="labels"):
        linear_cross_entropy(h, W, labels.float(), reduction="none")
