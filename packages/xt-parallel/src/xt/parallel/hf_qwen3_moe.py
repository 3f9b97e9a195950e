"""Adapters that let xt.parallel run a Hugging Face transformers ``Qwen3MoeForCausalLM``.

* :class:`GroupedSwiGLUExperts` replaces HF's ``Qwen3MoeExperts`` (a per-expert loop) with
  dispatcher -> grouped GEMM -> combine over the *same* parameters (``gate_up_proj [E, 2F, D]``,
  ``down_proj [E, D, F]``), so state-dict keys are unchanged and EP can slice the E dimension.
* :func:`enable_varlen_attention` registers a packed-sequence attention with transformers'
  ``AttentionInterface`` (reads ``cu_seq_lens_q`` from the forward kwargs) and, given an SP group,
  wraps it in Ulysses.
* :func:`hf_packed_inputs` turns an XT packed batch into HF forward kwargs.

transformers is imported lazily (an optional dependency: ``xt-parallel[hf]``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xt.kernels.moe import grouped_gemm
from xt.parallel.expert_parallel import AllToAllDispatcher
from xt.parallel.ulysses import UlyssesAttention
from xt.parallel.varlen_attention import VarlenAttention

__all__ = ["GroupedSwiGLUExperts", "adapt_hf_moe_experts", "enable_varlen_attention", "hf_packed_inputs",
           "ATTN_NAME"]

ATTN_NAME = "xt_varlen"


class GroupedSwiGLUExperts(nn.Module):
    """SwiGLU experts over stacked weights with a swappable dispatcher (HF ``Qwen3MoeExperts`` layout).

    ``y = down_e(silu(gate_e(x)) * up_e(x))`` with ``[gate; up] = gate_up_proj[e] @ x``.

    Args:
        gate_up_proj: ``[E, 2F, D]`` parameter (reused, not copied).
        down_proj: ``[E, D, F]`` parameter.
        num_experts: global E (``gate_up_proj`` may later be sliced to ``E // ep_size`` by EP).

    Forward: ``(hidden_states[T, D], top_k_index[T, K] int64, top_k_weights[T, K]) -> [T, D]``.
    """

    def __init__(self, gate_up_proj: nn.Parameter, down_proj: nn.Parameter, num_experts: int) -> None:
        super().__init__()
        self.gate_up_proj = gate_up_proj
        self.down_proj = down_proj
        self.num_experts = num_experts
        self.dispatcher = AllToAllDispatcher(num_experts)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        x, counts, ctx = self.dispatcher.dispatch(hidden_states, top_k_index, top_k_weights)
        gate_up = grouped_gemm(x, self.gate_up_proj, counts, trans_b=True)
        gate, up = gate_up.chunk(2, dim=-1)
        y = grouped_gemm((F.silu(gate) * up).contiguous(), self.down_proj, counts, trans_b=True)
        return self.dispatcher.combine(y, ctx)


def adapt_hf_moe_experts(model: nn.Module) -> int:
    """Swap every HF stacked-experts module (``gate_up_proj``/``down_proj`` 3-D parameters) in place.

    Returns:
        The number of modules replaced.

    Raises:
        ValueError: no such module was found (not a Qwen3-MoE-like model).
    """
    replaced = 0
    for name, module in list(model.named_modules()):
        gu, dn = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
        if isinstance(module, GroupedSwiGLUExperts) or not (isinstance(gu, nn.Parameter) and isinstance(dn, nn.Parameter)):
            continue
        if gu.dim() != 3 or dn.dim() != 3:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, GroupedSwiGLUExperts(gu, dn, gu.shape[0]))
        replaced += 1
    if not replaced:
        raise ValueError("adapt_hf_moe_experts: no module with 3-D gate_up_proj/down_proj parameters found")
    return replaced


def _hf_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention-interface function: ``query [B=1, Hq, S, d]`` -> ``([1, S, Hq, d], None)``."""
    if query.shape[0] != 1:
        raise ValueError(f"{ATTN_NAME} attention needs packed input (batch 1); got batch {query.shape[0]}")
    if key.shape[2] != query.shape[2]:
        raise ValueError(f"{ATTN_NAME} attention is for training: keys ({key.shape[2]}) and queries ({query.shape[2]}) "
                         "must cover the same tokens (call the model with use_cache=False)")
    if kwargs.get("sliding_window") is not None:
        raise NotImplementedError(f"{ATTN_NAME} attention does not implement sliding windows")
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        cu = torch.tensor([0, query.shape[2]], dtype=torch.int32, device=query.device)
    core = module.xt_core_attention
    (core.inner if isinstance(core, UlyssesAttention) else core).scale = scaling
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    out = core(q, k, v, cu, kwargs.get("max_length_q"))
    return out.unsqueeze(0), None


def enable_varlen_attention(model: nn.Module, sp_group=None) -> None:
    """Make every ``self_attn`` of an HF model use packed (varlen) attention, under Ulysses if `sp_group`.

    Each attention module gets an ``xt_core_attention`` submodule (:class:`VarlenAttention`, or
    :class:`UlyssesAttention` around it) and ``model.config._attn_implementation`` is set to
    ``"xt_varlen"`` (registered with transformers' ``AttentionInterface``).

    Raises:
        ValueError: the model has no ``self_attn`` modules.
    """
    from transformers import AttentionInterface  # optional dependency

    AttentionInterface.register(ATTN_NAME, _hf_attention)
    found = 0
    for module in model.modules():
        attn = getattr(module, "self_attn", None)
        if attn is None:
            continue
        inner = VarlenAttention()
        attn.xt_core_attention = UlyssesAttention(inner, sp_group) if sp_group is not None else inner
        found += 1
    if not found:
        raise ValueError("enable_varlen_attention: no `self_attn` modules in the model")
    model.config._attn_implementation = ATTN_NAME
    for sub in model.modules():
        cfg = getattr(sub, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = ATTN_NAME


def hf_packed_inputs(batch: dict) -> dict:
    """XT packed batch (docs/contracts.md) -> kwargs for an HF ``*ForCausalLM.forward`` (labels left out).

    Returns:
        ``input_ids [1, T]``, ``position_ids [1, T]``, ``cu_seq_lens_q/k [D+1]`` int32,
        ``max_length_q/k`` int (global when the batch came from ``shard_batch_for_sp``),
        ``use_cache=False`` (a KV cache would grow again during activation-checkpointing recomputation).
    """
    cu = batch["cu_seqlens"].to(torch.int32)
    max_len = batch.get("max_seqlen")
    if max_len is None:
        max_len = int((cu[1:] - cu[:-1]).max())
    return {"input_ids": batch["input_ids"].unsqueeze(0), "position_ids": batch["position_ids"].unsqueeze(0),
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max_len, "max_length_k": max_len,
            "use_cache": False}
