"""GPT-OSS MoE parts: the biased top-k router (softmax over the chosen logits) and experts with biases
and the clamped SwiGLU, computed with ``xt.kernels.moe.grouped_gemm``.

Shape legend: T tokens, D hidden size, E experts (E_local in the experts), K top-k, R routed rows
(sorted by expert), F expert intermediate size (``intermediate_size``).

Reference: OpenAI gpt-oss model card (2025) and HF ``GptOssTopKRouter`` / ``GptOssExperts``:
``gate = min(gate, limit)``, ``up = clamp(up, -limit, limit)``,
``act = (up + 1) * gate * sigmoid(alpha * gate)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xt.core.seeded_init import InitRule
from xt.kernels.moe import grouped_gemm
from xt.models.common.experts import GroupedExperts
from xt.models.common.fp32 import fp32_region
from xt.models.common.router import RouterOutput, topk_or_replay

__all__ = ["GptOssRouter", "GptOssExperts", "clamped_swiglu"]


class GptOssRouter(nn.Module):
    """``logits = x W^T + b`` (float32), top-k on the logits, softmax over the K chosen logits.

    Args:
        hidden_size: D. num_experts: E. top_k: K.

    ``forward(x[T, D]) -> RouterOutput`` with ``probs = softmax(logits)`` over all E (what the
    Switch load-balancing loss uses) and ``topk_weights`` summing to 1 per token.
    """

    #: compute in fp32 with autocast off: bf16 compute copies of the weight are not made
    #: (xt.core.engine.compute_weights; docs/contracts.md, Model)
    xt_fp32_weights = True

    #: Routing-replay seam (:mod:`xt.models.common.routing_replay`): ``[T, K]`` int expert ids that
    #: replace the top-k while set (softmax over the live logits at them); None = route.
    replay_topk_ids: torch.Tensor | None = None

    def __init__(self, hidden_size: int, num_experts: int, top_k: int) -> None:
        super().__init__()
        self.num_experts, self.top_k = num_experts, top_k
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))
        self.bias = nn.Parameter(torch.zeros(num_experts))
        nn.init.normal_(self.weight, std=0.02)

    def xt_init_rules(self, std: float) -> dict:
        """Init rules: weight and bias normal(0, `std`) (as HF initialises GPT-OSS's router)."""
        return {"weight": InitRule("normal", std), "bias": InitRule("normal", std)}

    def forward(self, x: torch.Tensor) -> RouterOutput:
        """Route ``x[T, D]`` (any float dtype); float32 ``logits``/``probs [T, E]``, int64
        ``topk_ids [T, K]`` and float32 ``topk_weights [T, K]``, also inside a bf16 autocast region.
        With ``replay_topk_ids`` set, those experts are used (softmax over the live logits at them).

        Raises:
            ValueError: ``replay_topk_ids`` not ``[T, K]`` or with ids outside ``[0, E)``.
        """
        # Autocast off: it would run F.linear in bf16 and change which experts win the top-k.
        with fp32_region(x):
            logits = F.linear(x.float(), self.weight.float(), self.bias.float())
            top_vals, topk_ids = topk_or_replay(logits, self.top_k, self.replay_topk_ids)
            topk_weights = torch.softmax(top_vals, dim=-1)
            probs = torch.softmax(logits, dim=-1)
        return RouterOutput(logits, probs, topk_ids, topk_weights)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, top_k={self.top_k}"


def clamped_swiglu(gate: torch.Tensor, up: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    """GPT-OSS activation ``(clamp(up, -limit, limit) + 1) * g * sigmoid(alpha * g)``, ``g = min(gate, limit)``.

    ``gate, up``: ``[R, F]`` -> ``[R, F]`` same dtype.
    """
    gate = gate.clamp(max=limit)
    up = up.clamp(min=-limit, max=limit)
    return (up + 1) * (gate * torch.sigmoid(gate * alpha))


class GptOssExperts(GroupedExperts):
    """E experts ``y = W_down act(W_gu x + b_gu) + b_down``, rows grouped by expert.

    Weight layout (``nn.Linear`` style per expert, like :class:`xt.models.common.experts.GroupedExperts`):
      * ``gate_up_proj [E, 2F, D]``: rows ``0..F-1`` gate, ``F..2F-1`` up (HF interleaves them; the
        state-dict mapping de-interleaves), ``gate_up_proj_bias [E, 2F]`` likewise;
      * ``down_proj [E, D, F]``, ``down_proj_bias [E, D]``.
    Expert parallelism shards dimension 0 of all four. An expert with no rows gets zero gradient.

    Args:
        num_experts: E. hidden_size: D. intermediate_size: F. alpha, limit: clamped-SwiGLU constants.
        backend: ``grouped_gemm`` backend or None. init_std: normal init std of the weights.
    """

    #: ``[rows, F]`` tensors the clamped SwiGLU's autograd saves per routed row (clamped gate and up,
    #: the sigmoid, two products; measured with saved-tensor hooks): read by xt plan's memory model
    #: (``xt.parallel.memory_plan``; a plain SwiGLU saves 1)
    xt_activation_saves = 5

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, alpha: float = 1.702,
                 limit: float = 7.0, backend: str | None = None, init_std: float = 0.02) -> None:
        super().__init__(num_experts, hidden_size, intermediate_size, backend=backend, init_std=init_std)
        self.alpha, self.limit = float(alpha), float(limit)
        self.gate_up_proj_bias = nn.Parameter(torch.zeros(num_experts, 2 * intermediate_size))
        self.down_proj_bias = nn.Parameter(torch.zeros(num_experts, hidden_size))

    def xt_init_rules(self, std: float) -> dict:
        """Init rules: stacked weights normal(0, `std`), their biases zero."""
        return {**super().xt_init_rules(std), "gate_up_proj_bias": InitRule("zeros"),
                "down_proj_bias": InitRule("zeros")}

    def forward(self, x_sorted: torch.Tensor, tokens_per_expert: torch.Tensor) -> torch.Tensor:
        """``x_sorted[R, D]``, ``tokens_per_expert[E_local]`` (sums to R) -> ``[R, D]`` in ``x_sorted.dtype``.

        Raises:
            ValueError: (from ``grouped_gemm``) counts or shapes that disagree.
        """
        counts = tokens_per_expert.to(device=x_sorted.device, dtype=torch.int64)
        row_expert = torch.repeat_interleave(torch.arange(counts.numel(), device=x_sorted.device), counts,
                                             output_size=x_sorted.shape[0])
        h = grouped_gemm(x_sorted, self.gate_up_proj, tokens_per_expert, trans_b=True, backend=self.backend)
        h = h + self.gate_up_proj_bias[row_expert].to(h.dtype)
        gate, up = h.split(self.intermediate_size, dim=-1)
        a = clamped_swiglu(gate, up, self.alpha, self.limit)
        y = grouped_gemm(a, self.down_proj, tokens_per_expert, trans_b=True, backend=self.backend)
        return y + self.down_proj_bias[row_expert].to(y.dtype)

    def extra_repr(self) -> str:
        E, F2, D = self.gate_up_proj.shape
        return f"num_local_experts={E}, hidden_size={D}, intermediate_size={F2 // 2}, alpha={self.alpha}, limit={self.limit}"
