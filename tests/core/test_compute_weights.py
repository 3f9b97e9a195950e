"""`xt.core.engine.compute_weights.ComputeWeights`: bf16 compute copies of fp32 master weights.

The reference for every gradient is the same module run under ``torch.autocast`` alone (what
``train.weight_cast = "per_use"`` does), computed in the same process; tiny shapes keep bf16 fast
on CPUs that emulate it.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from xt.core.engine.compute_weights import ComputeWeights, eligible_parameters


class _Router(nn.Module):
    xt_fp32_weights = True

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 8))

    def forward(self, x):
        with torch.autocast("cpu", enabled=False):
            return x.float() @ self.weight.float().t()


class _Net(nn.Module):
    """Embedding -> linear (with bias) -> router -> head tied to ``proj2`` -> sum."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.proj = nn.Linear(8, 8)
        self.proj2 = nn.Linear(8, 8, bias=False)
        self.head = nn.Linear(8, 8, bias=False)
        self.head.weight = self.proj2.weight  # tied: one master, used twice per forward
        self.router = _Router()
        self.scale = nn.Parameter(torch.ones(8))

    def forward(self, ids):
        h = self.embed(ids)
        h = self.proj(h) * self.scale
        h = self.proj2(h)
        r = self.router(h)
        return (self.head(h).float() ** 2).sum() + r.sum()


def _net(seed: int = 0) -> _Net:
    torch.manual_seed(seed)
    return _Net()


def _grads(net: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def _backward(net: nn.Module, ids: torch.Tensor, weights: ComputeWeights | None) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if weights is None:
            net(ids).backward()
        else:
            with weights.swapped():
                net(ids).backward()


IDS = [torch.tensor([1, 4, 2, 9, 3]), torch.tensor([7, 7, 0, 10])]


def test_eligible_leaves_out_embeddings_biases_fp32_modules_and_vectors():
    net = _net()
    names = {n for n, p in net.named_parameters() if any(p is q for q in eligible_parameters(net))}
    assert names == {"proj.weight", "proj2.weight"}  # head.weight is proj2.weight (tied)


def test_swap_holds_copies_and_restores_masters_even_on_error():
    net = _net()
    masters = {n: p for n, p in net.named_parameters(remove_duplicate=False)}
    w = ComputeWeights(net)
    assert (w.num_tensors, w.num_params) == (2, 128)
    with pytest.raises(ZeroDivisionError):
        with w.swapped():
            assert net.proj.weight.dtype == torch.bfloat16
            assert net.head.weight is net.proj2.weight  # the tie survives the swap
            assert net.proj.bias.dtype == torch.float32 and net.router.weight.dtype == torch.float32
            assert torch.equal(net.proj.weight, masters["proj.weight"].to(torch.bfloat16))
            1 / 0
    for n, p in net.named_parameters(remove_duplicate=False):
        assert p is masters[n]
    with w.swapped(), pytest.raises(RuntimeError, match="already active"):
        with w.swapped():
            pass


def test_accumulated_gradients_equal_autocast_per_use_with_tied_weights():
    ref, new = _net(), _net()
    w = ComputeWeights(new)
    for ids in IDS:  # two micro-batches: fp32 accumulation across them
        _backward(ref, ids, None)
        _backward(new, ids, w)
    g_ref, g_new = _grads(ref), _grads(new)
    assert set(g_ref) == set(g_new)
    for n in g_ref:
        assert g_new[n].dtype == torch.float32
        assert torch.equal(g_new[n], g_ref[n]), n
    with w.swapped():  # the copies' own gradients were handed over and freed
        assert all(p.grad is None for p in new.parameters() if p.dtype == torch.bfloat16)


def test_changed_masters_are_recast_before_the_next_use():
    net = _net()
    w = ComputeWeights(net)
    before = net.proj.weight.detach().to(torch.bfloat16)
    _backward(net, IDS[0], w)
    torch.optim.SGD(net.parameters(), lr=0.5).step()  # in place on the masters: versions move
    with w.swapped():
        seen = net.proj.weight.detach().clone()
    assert not torch.equal(seen, before)
    assert torch.equal(seen, net.proj.weight.detach().to(torch.bfloat16))
    with torch.no_grad():
        net.proj2.weight.data.mul_(2.0)  # a `.data` write is invisible to version counters ...
    w.refresh()  # ... so the caller refreshes explicitly
    with w.swapped():
        seen = net.head.weight.detach().clone()
    assert torch.equal(seen, net.proj2.weight.detach().to(torch.bfloat16))


def test_frozen_weights_get_copies_without_gradients():
    net = _net()
    net.proj.weight.requires_grad_(False)
    w = ComputeWeights(net)
    _backward(net, IDS[1], w)
    assert net.proj.weight.grad is None
    assert net.proj2.weight.grad is not None and net.proj2.weight.grad.dtype == torch.float32


def test_rejects_a_non_16_bit_dtype():
    with pytest.raises(ValueError, match="torch.bfloat16 or torch.float16"):
        ComputeWeights(_net(), torch.float32)
