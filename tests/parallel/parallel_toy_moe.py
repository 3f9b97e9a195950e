"""A small MoE decoder laid out like XT's models (docs/contracts.md), for parallel-equivalence tests.

``model.model.layers[i].self_attn.core_attention`` (swappable core attention) and
``model.model.layers[i].mlp`` with ``.gate`` (router), ``.experts`` (weights stacked over E) and
``.dispatcher``. Forward takes a packed batch and returns ``loss_sum`` (CE summed over labels != -100).
The router has a fixed ``logit_bias`` buffer used to force routing skews (all tokens to one expert,
experts that receive nothing).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from xt.kernels.moe import grouped_gemm
from xt.parallel.expert_parallel import AllToAllDispatcher
from xt.parallel.varlen_attention import VarlenAttention


@dataclass
class ToyConfig:
    """Sizes with HF names (hidden_size, num_experts, ...); all small."""

    vocab_size: int = 32
    hidden_size: int = 16
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 4
    num_experts: int = 4
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 8


def _rms(x, w, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope(x, pos):  # x [T, H, d]
    d = x.shape[-1]
    acc = torch.promote_types(x.dtype, torch.float32)
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=acc) / d))
    ang = pos.to(acc)[:, None] * inv[None]
    cos, sin = ang.cos()[:, None, :].to(x.dtype), ang.sin()[:, None, :].to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


class Attention(nn.Module):
    """GQA attention with RoPE from position_ids; the core attention is a swappable submodule."""

    def __init__(self, c: ToyConfig):
        super().__init__()
        self.c = c
        self.q_proj = nn.Linear(c.hidden_size, c.num_attention_heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=False)
        self.core_attention = VarlenAttention()

    def forward(self, x, position_ids, cu_seqlens, max_seqlen):
        T, d = x.shape[0], self.c.head_dim
        q = _rope(self.q_proj(x).view(T, -1, d), position_ids)
        k = _rope(self.k_proj(x).view(T, -1, d), position_ids)
        v = self.v_proj(x).view(T, -1, d)
        return self.o_proj(self.core_attention(q, k, v, cu_seqlens, max_seqlen).reshape(T, -1))


class Router(nn.Module):
    """Softmax over all experts in fp32 (+ fixed ``logit_bias`` for skews), top-k without renormalising."""

    def __init__(self, c: ToyConfig):
        super().__init__()
        self.top_k = c.num_experts_per_tok
        self.weight = nn.Parameter(torch.randn(c.num_experts, c.hidden_size) * 0.5)
        self.register_buffer("logit_bias", torch.zeros(c.num_experts))

    def forward(self, x):
        acc = torch.promote_types(x.dtype, torch.float32)  # fp32, or float64 for float64 runs
        logits = F.linear(x.to(acc), self.weight.to(acc)) + self.logit_bias
        probs = logits.softmax(-1)
        w, ids = probs.topk(self.top_k, dim=-1)
        return ids, w


class Experts(nn.Module):
    """SwiGLU experts, ``w_gate_up [E, 2F, D]``, ``w_down [E, D, F]``, via ``xt.kernels`` grouped GEMM."""

    def __init__(self, c: ToyConfig):
        super().__init__()
        F_, D, E = c.moe_intermediate_size, c.hidden_size, c.num_experts
        self.w_gate_up = nn.Parameter(torch.randn(E, 2 * F_, D) * D ** -0.5)
        self.w_down = nn.Parameter(torch.randn(E, D, F_) * F_ ** -0.5)

    def forward(self, x, tokens_per_expert):
        h = grouped_gemm(x, self.w_gate_up, tokens_per_expert, trans_b=True)
        g, u = h.chunk(2, -1)
        return grouped_gemm((F.silu(g) * u).contiguous(), self.w_down, tokens_per_expert, trans_b=True)


class MoE(nn.Module):
    """Router -> dispatcher.dispatch -> experts -> dispatcher.combine (docs/contracts.md)."""

    def __init__(self, c: ToyConfig):
        super().__init__()
        self.gate = Router(c)
        self.experts = Experts(c)
        self.dispatcher = AllToAllDispatcher(c.num_experts)

    dispatcher_runs_experts = True  # parallel.ep_overlap (docs/contracts.md)

    def forward(self, x):
        ids, w = self.gate(x)
        if hasattr(self.dispatcher, "run_experts"):
            return self.dispatcher.run_experts(x, ids, w, self.experts)
        xs, counts, ctx = self.dispatcher.dispatch(x, ids, w)
        return self.dispatcher.combine(self.experts(xs, counts), ctx)


class Layer(nn.Module):
    """Pre-norm decoder layer: x + attn(rms(x)); x + moe(rms(x))."""

    def __init__(self, c: ToyConfig):
        super().__init__()
        self.input_layernorm = nn.Parameter(torch.ones(c.hidden_size))
        self.post_attention_layernorm = nn.Parameter(torch.ones(c.hidden_size))
        self.self_attn = Attention(c)
        self.mlp = MoE(c)

    def forward(self, x, position_ids, cu_seqlens, max_seqlen):
        x = x + self.self_attn(_rms(x, self.input_layernorm), position_ids, cu_seqlens, max_seqlen)
        return x + self.mlp(_rms(x, self.post_attention_layernorm))


class Inner(nn.Module):
    """Embeddings, layers, final norm weight (HF ``model.model``)."""

    def __init__(self, c: ToyConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(Layer(c) for _ in range(c.num_hidden_layers))
        self.norm = nn.Parameter(torch.ones(c.hidden_size))


class ToyMoEForCausalLM(nn.Module):
    """Causal LM over a packed batch; returns ``loss_sum`` (fp32 CE summed over labels != -100)."""

    def __init__(self, c: ToyConfig):
        super().__init__()
        self.config = c
        self.model = Inner(c)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)

    def forward(self, input_ids, labels, position_ids, cu_seqlens, max_seqlen=None):
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x, position_ids, cu_seqlens, max_seqlen)
        logits = self.lm_head(_rms(x, self.model.norm))
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        loss_sum = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
        return SimpleNamespace(loss_sum=loss_sum, aux_loss=None, metrics={}, logits=None)


def build_toy(c: ToyConfig, seed: int, skew: str) -> ToyMoEForCausalLM:
    """Deterministic toy model; `skew` in {"none", "one_expert", "empty_experts"} sets router biases."""
    torch.manual_seed(seed)
    m = ToyMoEForCausalLM(c)
    for i, layer in enumerate(m.model.layers):
        bias = layer.mlp.gate.logit_bias
        if skew == "one_expert":  # every token's top-1 is expert i % E
            bias[i % c.num_experts] = 30.0
        elif skew == "empty_experts":  # the last half of the experts (a whole EP rank at ep 2) get nothing
            bias[c.num_experts // 2:] = -1e4
    return m
