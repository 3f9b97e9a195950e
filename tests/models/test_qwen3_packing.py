"""Packed documents: core-attention backends against a float64 per-document reference, and the
whole model: packed per-document logits equal each document run alone (hypothesis layouts)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

import xt.models.common.core_attention as ca
from qwen3_helpers import pack, rel_err
from xt.models import build_model
from xt.models.common import CoreAttention

lengths_st = st.lists(st.integers(1, 9), min_size=1, max_size=6)


def _reference(q, k, v, lengths):
    """Naive float64 softmax attention, one document at a time, causal."""
    out, s = [], 0
    groups = q.shape[1] // k.shape[1]
    for n in lengths:
        qd, kd, vd = (t[s:s + n].double().transpose(0, 1) for t in (q, k, v))
        kd, vd = kd.repeat_interleave(groups, 0), vd.repeat_interleave(groups, 0)
        scores = qd @ kd.transpose(1, 2) / q.shape[-1] ** 0.5
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        out.append((scores.softmax(-1) @ vd).transpose(0, 1))
        s += n
    return torch.cat(out)


def _qkv(lengths, hq=4, hkv=2, hd=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return (torch.randn(T, hq, hd, generator=g), torch.randn(T, hkv, hd, generator=g),
            torch.randn(T, hkv, hd, generator=g), cu)


@pytest.mark.parametrize("path", ["loop", "mask"])
@settings(max_examples=20, deadline=None)
@given(lengths=lengths_st)
def test_sdpa_backend_matches_reference(path, lengths):
    q, k, v, cu = _qkv(lengths)
    old = ca._SDPA_LOOP_MAX_DOCS, ca._SDPA_LOOP_MIN_AVG_LEN
    ca._SDPA_LOOP_MAX_DOCS, ca._SDPA_LOOP_MIN_AVG_LEN = (10**9, 0) if path == "loop" else (0, 10**9)
    try:
        out = CoreAttention("sdpa")(q, k, v, cu, max(lengths))
    finally:
        ca._SDPA_LOOP_MAX_DOCS, ca._SDPA_LOOP_MIN_AVG_LEN = old
    assert rel_err(out, _reference(q, k, v, lengths)) <= 1e-5


@settings(max_examples=4, deadline=None)
@given(lengths=lengths_st)
def test_flex_backend_matches_reference(lengths):
    q, k, v, cu = _qkv(lengths)
    out = CoreAttention("flex")(q, k, v, cu, max(lengths))
    assert rel_err(out, _reference(q, k, v, lengths)) <= 1e-5


def test_core_attention_gradients_match_reference():
    lengths = [5, 1, 7]
    q, k, v, cu = _qkv(lengths)
    for t in (q, k, v):
        t.requires_grad_(True)
    w = torch.randn(sum(lengths), 4, 8)
    (CoreAttention("sdpa")(q, k, v, cu, 7) * w).sum().backward()
    got = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    (_reference(q, k, v, lengths) * w.double()).sum().backward()
    for g, t in zip(got, (q, k, v)):
        assert rel_err(g, t.grad) <= 1e-5


def test_auto_backend_on_cpu_is_sdpa_and_bad_backend_rejected():
    q, *_ = _qkv([3])
    assert CoreAttention("auto").resolve_backend(q) == "sdpa"
    with pytest.raises(ValueError, match="allowed"):
        CoreAttention("xformers")


_MODEL = None


def _tiny_moe():
    global _MODEL
    if _MODEL is None:
        torch.manual_seed(0)
        _MODEL = build_model(dict(architectures=["Qwen3MoeForCausalLM"], vocab_size=64, hidden_size=16,
                                  intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=4, num_experts=4, num_experts_per_tok=2,
                                  moe_intermediate_size=8, initializer_range=0.3)).eval()
    return _MODEL


@settings(max_examples=10, deadline=None)
@given(lengths=lengths_st, seed=st.integers(0, 2**16))
def test_packed_model_equals_documents_alone(lengths, seed):
    m = _tiny_moe()
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(0, 64, (n,), generator=g) for n in lengths]
    batch = pack(docs)
    with torch.no_grad():
        out = m(**batch, return_logits=True)
        alone = [m(d, labels=b["labels"], return_logits=True) for d, b in ((d, pack([d])) for d in docs)]
    assert rel_err(out.logits, torch.cat([a.logits for a in alone])) <= 1e-5
    # the loss sum is additive over documents (labels are pre-shifted per document)
    assert rel_err(out.loss_sum, sum(a.loss_sum for a in alone)) <= 1e-5


def test_packed_defaults_and_contract_errors():
    m = _tiny_moe()
    docs = [torch.randint(0, 64, (n,)) for n in (4, 6)]
    b = pack(docs)
    with torch.no_grad():
        full = m(**b, return_logits=True).logits
        no_pos = m(b["input_ids"], cu_seqlens=b["cu_seqlens"]).logits  # positions derived from cu_seqlens
    assert torch.equal(full, no_pos)
    with pytest.raises(ValueError, match="cu_seqlens"):
        m(b["input_ids"], cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.int32))
    with pytest.raises(ValueError, match="labels"):
        m(b["input_ids"], labels=b["labels"][:-1])


def test_sequence_parallel_shard_accepts_global_cu_seqlens():
    """A shard of T tokens with the global cu_seqlens (n*T) is accepted when position_ids come along
    (xt.parallel's Ulysses wrapper restores the full sequence inside core attention)."""
    m = _tiny_moe()
    b = pack([torch.randint(0, 64, (n,)) for n in (5, 3)])
    seen = {}

    class Spy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, q, k, v, cu_seqlens, max_seqlen):
            seen["cu"] = cu_seqlens.tolist()
            return q  # shape-preserving stand-in
    attn = m.model.layers[0].self_attn
    old = attn.core_attention
    attn.core_attention = Spy(old)
    try:
        with torch.no_grad():
            m(b["input_ids"][:4], position_ids=b["position_ids"][:4], cu_seqlens=b["cu_seqlens"], max_seqlen=5)
    finally:
        attn.core_attention = old
    assert seen["cu"] == [0, 5, 8]
    with pytest.raises(ValueError, match="cu_seqlens"):  # without position_ids it is an error
        m(b["input_ids"][:4], cu_seqlens=b["cu_seqlens"])
