"""Checks of `xt.kernels.optim.AdamWRefresh` shared by the torch-backend tests
(``test_optim_adamw.py``) and the Triton-interpreter run (``triton_interp_optim.py``).

The reference is ``torch.optim.AdamW(foreach=False)`` in float64 on float64 copies of the same
parameters and gradients, with the clip scale divided out of the gradients beforehand.

Tolerances (relative, ``rel`` in float64):
- float64 parameters: 1e-12. The same formula in the same precision; only the order of a few
  roundings differs (torch's ``addcdiv`` and ``lerp``-free update vs the kernel's expression),
  measured ~1e-17.
- float32 parameters: the weights 1e-6 and the distance they moved 1e-5 after three steps. Each
  update rounds ~10 float32 operations (2^-24 each) and Adam's ``m / (sqrt(v) + eps)`` keeps that
  relative size for gradients far from eps (these are standard-normal); measured ~7e-8.
- bf16 copies: bit for bit equal to ``param.to(torch.bfloat16)`` (the same rounding).
"""
from __future__ import annotations

import torch

from xt.kernels.optim import AdamWRefresh

from _refs import rel

SHAPES = [(37, 5), (20001,), (3,), (4, 4)]  # odd sizes; 20001 spans three kernel blocks


def _setup(dtype, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(device, dtype)) for s in SHAPES]
    ref = [torch.nn.Parameter(p.detach().double().cpu().clone()) for p in ps]
    return gen, ps, ref


def _groups(ps):
    return [{"params": ps[:2], "weight_decay": 0.1}, {"params": ps[2:], "weight_decay": 0.0, "lr": 3e-3}]


def run_against_float64(backend: str, dtype: torch.dtype, steps: int = 3, scale: float | None = 2.5,
                        device: str = "cpu"):
    """Run `steps` updates (the last parameter gets no gradient in step 2) and return
    ``(params, reference params, starting params, optimizer, reference optimizer)``."""
    gen, ps, ref = _setup(dtype, device=device)
    start = [p.detach().double().cpu() for p in ps]
    opt = AdamWRefresh(_groups(ps), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, backend=backend)
    want = torch.optim.AdamW(_groups(ref), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    for step in range(steps):
        for i, (p, q) in enumerate(zip(ps, ref)):
            if step == 1 and i == len(ps) - 1:
                p.grad = q.grad = None  # skipped this step: its state and step count stay
                continue
            g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
            p.grad = g.to(device)
            q.grad = g.double() / scale if scale else g.double()
        if scale:
            opt.grad_scale = torch.tensor(scale, dtype=torch.float32, device=device)
        opt.step()
        want.step()
    assert int(opt.state[ps[-1]]["step"]) == steps - 1
    return ps, ref, start, opt, want


def check_against_float64(backend: str, dtype: torch.dtype, device: str = "cpu") -> None:
    """The update of `dtype` parameters against float64 AdamW, to the module's tolerances."""
    ps, ref, start, opt, want = run_against_float64(backend, dtype, device=device)
    bound = 1e-12 if dtype == torch.float64 else 1e-6
    for p, q, s in zip(ps, ref, start):
        assert rel(p.cpu(), q) < bound
        if dtype == torch.float32:
            assert rel(p.double().cpu() - s, q - s) < 1e-5
        for key in ("exp_avg", "exp_avg_sq"):
            assert rel(opt.state[p][key].cpu(), want.state[q][key]) < bound, key
        assert float(opt.state[p]["step"]) == float(want.state[q]["step"])


def check_copies_are_the_cast(backend: str, copy_dtype: torch.dtype, device: str = "cpu") -> None:
    """Attached 16-bit copies equal ``param.to(copy_dtype)`` bit for bit after every step; a
    parameter without a copy is updated the same as with one."""
    gen, ps, _ = _setup(torch.float32, seed=1, device=device)
    twin = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    copies = [torch.empty_like(p, dtype=copy_dtype) for p in ps[:3]]
    opt = AdamWRefresh(_groups(ps), lr=1e-2, backend=backend)
    opt.attach_compute_copies(list(zip(ps[:3], copies)))
    plain = AdamWRefresh(_groups(twin), lr=1e-2, backend=backend)
    for _ in range(2):
        for p, q in zip(ps, twin):
            p.grad = torch.randn(p.shape, generator=gen).to(device)
            q.grad = p.grad.clone()
        opt.step()
        plain.step()
        for p, c in zip(ps, copies):
            assert torch.equal(c, p.detach().to(copy_dtype))
        for p, q in zip(ps, twin):
            assert torch.equal(p, q)


# (check, dtype) pairs each backend's test file runs, and their ids
CASES = [(check_against_float64, torch.float64), (check_against_float64, torch.float32),
         (check_copies_are_the_cast, torch.bfloat16), (check_copies_are_the_cast, torch.float16)]
CASE_IDS = ["float64-update", "float32-update", "bf16-copies", "fp16-copies"]
