"""`CudaCompiled` under non-reentrant activation checkpointing: the recompute's early-stop signal
(raised from the pack hook of the last saved tensor, which can be inside a compiled call, e.g.
DeepSeek-V3's MTP block ending in a compiled RMSNorm) passes through, instead of being taken for a
compile failure (which broke the recompute with "target_frame.early_stop is set" on the H200)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from xt.core.compiled import CudaCompiled


class _AlwaysCompiled(CudaCompiled):
    """Takes the compiled branch on the CPU too (torch.compile patched to the identity below)."""

    def __call__(self, *args):
        return self._call_compiled(args)


def _norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def _block(norm, x, w1, w2):
    h = (x @ w1).sin()
    return norm(h, w2)  # the block's last saving op is the compiled call


@pytest.mark.parametrize("early_stop", [True, False])
def test_checkpointed_block_ending_in_a_compiled_call(monkeypatch, early_stop):
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    torch.manual_seed(0)
    x = torch.randn(6, 8, dtype=torch.float64)
    w1 = torch.randn(8, 8, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(8, dtype=torch.float64, requires_grad=True)
    ref = _block(_norm, x, w1, w2).square().sum()
    ref_grads = torch.autograd.grad(ref, (w1, w2))

    norm = _AlwaysCompiled(_norm, "norm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to eager would warn
        with torch.utils.checkpoint.set_checkpoint_early_stop(early_stop):
            out = checkpoint(_block, norm, x, w1, w2, use_reentrant=False).square().sum()
            grads = torch.autograd.grad(out, (w1, w2))
    assert not norm._broken
    assert out.item() == ref.item()
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=0)


def test_a_real_compile_failure_still_falls_back_to_eager(monkeypatch):
    def broken(*args):
        raise RuntimeError("inductor: no backend")

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    norm = _AlwaysCompiled(_norm, "norm")
    x, w = torch.randn(3, 4), torch.randn(4)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        out = norm(x, w)
    assert norm._broken
    torch.testing.assert_close(out, _norm(x, w), rtol=0, atol=0)
