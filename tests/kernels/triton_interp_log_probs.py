"""Per-token LM-head kernels (``per_token_triton``) on CPU under the Triton interpreter.

Run by ``test_triton_interpreter.py`` in a fresh subprocess with ``TRITON_INTERPRET=1`` (imported
any other way it skips itself; see ``triton_interp_cases.py`` for why). Inputs are float32/float16
(the interpreter's bf16 arithmetic is wrong). Covers ``linear_log_probs`` with temperature and
entropy (values and gradients vs float64 full logits, random upstream gradients, ignored
tokens), ``linear_cross_entropy(reduction="none")`` with z-loss, and rows spanning several
vocabulary blocks with a growing running max (the online rescaling of the entropy sum).
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
    pytest.skip("run by test_triton_interpreter.py in a subprocess with TRITON_INTERPRET=1", allow_module_level=True)
from xt.kernels.loss import per_token_triton  # noqa: E402
from _refs import check_log_probs_f64, rel  # noqa: E402
from xt.kernels.loss import linear_cross_entropy, linear_log_probs  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


def _inputs(T, D, V, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(T, D, generator=g) * scale).to(dtype).requires_grad_()
    W = torch.randn(V, D, generator=g).to(dtype).requires_grad_()
    labels = torch.randint(0, V, (T,), generator=g)
    labels[::3] = -100
    return h, W, labels


@pytest.fixture(params=[4096, 16], ids=["one-block", "multi-block"])
def block_v(request):
    per_token_triton.MAX_BLOCK_V = request.param
    yield request.param
    per_token_triton.MAX_BLOCK_V = 4096


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("temperature,entropy", [(1.0, False), (0.7, True), (1.9, True)])
def test_log_probs_triton_match_float64(block_v, dtype, temperature, entropy):
    h, W, labels = _inputs(21, 8, 37, dtype, seed=3)
    r = linear_log_probs(h, W, labels, temperature=temperature, return_entropy=entropy, chunk_size=8,
                         backend="triton")
    check_log_probs_f64(h, W, labels, temperature, r, tol=TOL[dtype], seed=7)


def test_rising_max_across_blocks_and_large_logits(block_v):
    """Each row's logits increase along the vocabulary, so every block raises the running max;
    logits up to ~550 make a naive ``lse − Σ p·y`` entropy lose digits. float32 logits that large
    carry ~3e-5 absolute error, so the gradients are checked at 1e-4 against float64 and tightly
    against the torch step (same float32 logits)."""
    T, D, V = 6, 2, 53
    h = torch.tensor([[1.0, 0.0]] * T).mul_(torch.arange(1, T + 1)[:, None] * 3.0).requires_grad_()
    W = torch.stack([torch.linspace(0.0, 40.0, V), torch.zeros(V)], 1).requires_grad_()
    labels = torch.tensor([V - 1, 0, 5, -100, V - 2, 17])
    out = {}
    for b in ("triton", "torch"):
        def run():
            return linear_log_probs(h, W, labels, temperature=1.3, return_entropy=True, chunk_size=4, backend=b)
        check_log_probs_f64(h, W, labels, 1.3, run(), tol=1e-6, grad_tol=1e-4, seed=2)
        r = run()
        out[b] = (*r, *torch.autograd.grad((r.log_probs + r.entropy).sum(), (h, W)))
    for a, b in zip(out["triton"], out["torch"]):
        assert rel(a, b) <= 1e-6


@pytest.mark.parametrize("z", [0.0, 1e-2])
def test_reduction_none_triton_matches_float64(block_v, z):
    h, W, labels = _inputs(19, 8, 41, torch.float32, seed=5)
    loss, zl = linear_cross_entropy(h, W, labels, reduction="none", z_loss_coef=z, chunk_size=6,
                                    return_z_loss=True, backend="triton")
    hr, Wr = h.detach().double().requires_grad_(), W.detach().double().requires_grad_()
    logits = hr @ Wr.t()
    rz = z * torch.logsumexp(logits, -1) ** 2 * (labels != -100)
    ref = F.cross_entropy(logits, labels, ignore_index=-100, reduction="none") + rz
    assert loss.shape == (19,) and rel(loss, ref) <= 1e-5 and rel(zl, rz) <= 1e-5
    assert bool((loss[labels == -100] == 0).all())
    up = torch.randn(19, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad((loss * up).sum(), (h, W))
    want = torch.autograd.grad((ref * up.double()).sum(), (hr, Wr))
    assert rel(got[0], want[0]) <= 1e-5 and rel(got[1], want[1]) <= 1e-5


def test_triton_and_torch_steps_agree():
    h, W, labels = _inputs(13, 8, 29, torch.float32, seed=9)
    out = {}
    for b in ("triton", "torch"):
        r = linear_log_probs(h, W, labels, temperature=0.8, return_entropy=True, chunk_size=5, backend=b)
        out[b] = (*r, *torch.autograd.grad((r.log_probs * 2.0 - r.entropy).sum(), (h, W)))
    for a, b in zip(out["triton"], out["torch"]):
        assert rel(a, b) <= 1e-5
