"""Routers and router aux losses under bf16 autocast (``train.dtype = "bf16"``) compute exactly what
they compute in float32 on the same inputs: the same top-k ids, bit-equal weights, logits and losses.

Each case runs on CPU and (marked ``gpu``, skipped without CUDA) on CUDA. Tensors stay small: CPU
bf16 matmuls can be ~38x slower without native bf16.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from xt.models.common.fp32 import fp32_region
from xt.models.common.router import TopKRouter, load_balancing_loss, router_stats, z_loss
from xt.models.deepseek_v3.sigmoid_router import SigmoidGroupRouter, sequence_balance_loss
from xt.models.gpt_oss.moe import GptOssRouter

T, D, E, K = 64, 32, 8, 2
DOC_LENGTHS = [20, 1, 0, 43]  # an empty document too

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA")])]


def _router(kind: str, device: str) -> torch.nn.Module:
    """A router of ``kind`` with random float32 weights (and biases) on ``device``."""
    g = torch.Generator().manual_seed(1)
    if kind == "qwen3_norm":
        r = TopKRouter(D, E, K, norm_topk_prob=True)
    elif kind == "qwen3_no_norm":
        r = TopKRouter(D, E, K, norm_topk_prob=False)
    elif kind == "deepseek_v3":
        r = SigmoidGroupRouter(D, E, 3, n_group=4, topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True)
        r.e_score_correction_bias.copy_(0.05 * torch.randn(E, generator=g))
    elif kind == "deepseek_v3_no_group":
        r = SigmoidGroupRouter(D, E, K, routed_scaling_factor=1.5, norm_topk_prob=False)
        r.e_score_correction_bias.copy_(0.05 * torch.randn(E, generator=g))
    elif kind == "gpt_oss":
        r = GptOssRouter(D, E, K)
        with torch.no_grad():
            r.bias.copy_(0.3 * torch.randn(E, generator=g))
    else:
        raise KeyError(kind)
    with torch.no_grad():
        r.weight.copy_(torch.randn(E, D, generator=g) / D ** 0.5)
    return r.to(device)


KINDS = ["qwen3_norm", "qwen3_no_norm", "deepseek_v3", "deepseek_v3_no_group", "gpt_oss"]


def _doc_ids(device: str) -> tuple[torch.Tensor, int]:
    ids = torch.repeat_interleave(torch.arange(len(DOC_LENGTHS)), torch.tensor(DOC_LENGTHS))
    return ids.to(device), len(DOC_LENGTHS)


@contextlib.contextmanager
def _deterministic():
    """Deterministic kernels (CUDA ``index_add`` uses float atomics otherwise), restored after."""
    was, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn)


def _route_and_losses(router: torch.nn.Module, x: torch.Tensor, amp: bool) -> dict[str, torch.Tensor]:
    """Route ``x``, compute every aux loss and the weight gradient, optionally under bf16 autocast."""
    router.zero_grad(set_to_none=True)
    ctx = torch.autocast(x.device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with _deterministic(), ctx:
        out = router(x)
        stats = [router_stats(out, router.num_experts)]
        res = {"logits": out.logits, "probs": out.probs, "ids": out.topk_ids, "weights": out.topk_weights,
               "lb": load_balancing_loss(stats), "z": z_loss(stats),
               "tokens_per_expert": stats[0].tokens_per_expert}
        if isinstance(router, SigmoidGroupRouter):
            doc_ids, num_docs = _doc_ids(x.device.type)
            res["seq"] = sequence_balance_loss(out.probs, out.topk_ids, doc_ids, num_docs)
        probe = torch.linspace(-1, 1, out.topk_weights.numel(), device=x.device).view_as(out.topk_weights)
        total = (out.topk_weights * probe).sum() + sum(v for k, v in res.items() if k in ("lb", "z", "seq"))
    total.backward()
    res["weight_grad"] = router.weight.grad.clone()
    return res


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_router_under_bf16_autocast_equals_fp32(kind, device, x_dtype):
    """Same inputs (float32 hidden states, or the bf16 ones autocast may hand over) with and without
    bf16 autocast: identical top-k ids, bit-equal weights/logits/aux losses/gradients, all float32."""
    router = _router(kind, device)
    x = torch.randn(T, D, generator=torch.Generator().manual_seed(2)).to(device=device, dtype=x_dtype)
    ref = _route_and_losses(router, x, amp=False)
    amp = _route_and_losses(router, x, amp=True)
    assert amp.keys() == ref.keys()
    for name, want in ref.items():
        got = amp[name]
        if name == "ids":
            assert got.dtype == torch.int64
        else:
            assert got.dtype == torch.float32, (name, got.dtype)
        assert torch.equal(got, want), f"{kind}/{device}: {name} differs under bf16 autocast"
    # The reference really is the float32 computation on these inputs.
    bias = getattr(router, "bias", None)
    logits = F.linear(x.float(), router.weight, None if bias is None else bias)
    assert torch.equal(ref["logits"], logits)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_plain_linear_under_autocast_is_bf16_but_router_logits_are_fp32(kind, device):
    """What the check above guards against: under bf16 autocast a plain ``F.linear`` on these float32
    inputs yields bf16 logits that differ from the float32 ones (the pre-fix router), while the
    router's logits are float32 and equal to the autocast-free computation."""
    router = _router(kind, device)
    x = torch.randn(T, D, generator=torch.Generator().manual_seed(2)).to(device)
    bias = getattr(router, "bias", None)
    with torch.no_grad():
        fp32_logits = F.linear(x, router.weight, bias)
        with torch.autocast(device, dtype=torch.bfloat16):
            naive = F.linear(x.float(), router.weight.float(), None if bias is None else bias.float())
            out = router(x)
    assert naive.dtype == torch.bfloat16
    assert not torch.equal(naive.float(), fp32_logits)
    assert out.logits.dtype == torch.float32 and out.topk_weights.dtype == torch.float32
    assert torch.equal(out.logits, fp32_logits)
    k = router.top_k
    naive_ids = naive.float().topk(k, dim=-1).indices.sort(-1).values
    fp32_ids = fp32_logits.topk(k, dim=-1).indices.sort(-1).values
    changed = (naive_ids != fp32_ids).any(-1).float().mean().item()
    print(f"{kind}/{device}: bf16 logits change the top-{k} logit set of {100 * changed:.1f}% of tokens")


@pytest.mark.parametrize("device", DEVICES)
def test_fp32_region_turns_autocast_off_on_its_device(device):
    x = torch.randn(4, 4, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        assert (x @ x).dtype == torch.bfloat16
        with fp32_region(x):
            assert not torch.is_autocast_enabled(device)
            assert (x @ x).dtype == torch.float32
        assert torch.is_autocast_enabled(device)
        with fp32_region(torch.device(device)), fp32_region(device):
            assert (x @ x).dtype == torch.float32


def test_fp32_region_is_a_no_op_on_meta():
    """Autocast has no ``meta`` device type; routing a meta tensor (shape-only runs) still works."""
    x = torch.empty(T, D, device="meta")
    with fp32_region(x):
        pass
    out = TopKRouter(D, E, K, True).to("meta")(x)
    assert out.topk_ids.shape == (T, K) and out.topk_weights.dtype == torch.float32
