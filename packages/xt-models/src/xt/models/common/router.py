"""Top-k softmax router and the router auxiliary losses (all in float32).

Shape legend: T tokens, D hidden size, E experts, K top-k (``num_experts_per_tok``), L MoE layers.

Load-balancing loss (Switch Transformer, Fedus et al. 2021, arXiv:2101.03961, eqs. 4-6), with the
normalisation of HF transformers' ``load_balancing_loss_func`` (Mixtral/Qwen3-MoE): over the L MoE
layers of one forward pass,

    f_e = (sum_l #{(t, k): topk_ids_l[t, k] = e}) / (L * T)     (sums to K over e)
    P_e = (sum_l sum_t softmax(logits_l[t])_e) / (L * T)
    aux = E * sum_e f_e * P_e

(``f`` carries no gradient; ``P`` does.) Router z-loss (Zoph et al. 2022, ST-MoE, arXiv:2202.08906,
eq. 5): the mean over layers and tokens of ``logsumexp(logits_l[t])**2``.

Numerics: the router and every statistic and loss here run in float32 with autocast off
(:func:`~xt.models.common.fp32.fp32_region`), so that a bf16 autocast forward routes exactly like
a float32 one on the same inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xt.core.seeded_init import InitRule
from xt.models.common.fp32 import fp32_region

__all__ = ["RouterOutput", "RouterStats", "TopKRouter", "checked_replay_ids", "topk_or_replay", "router_stats",
           "load_balancing_loss", "z_loss"]


@dataclass
class RouterOutput:
    """What a router returns.

    Attributes:
        logits: ``[T, E]`` float32 router logits.
        probs: ``[T, E]`` float32 scores the auxiliary loss uses (softmax of ``logits``).
        topk_ids: ``[T, K]`` int64 chosen experts.
        topk_weights: ``[T, K]`` float32 combine weights.
    """
    logits: torch.Tensor
    probs: torch.Tensor
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor


@dataclass
class RouterStats:
    """Per-layer sums for the auxiliary losses and metrics (over the layer's T tokens).

    Attributes:
        tokens_per_expert: ``[E]`` float32 number of routed slots per expert (no gradient).
        prob_sum: ``[E]`` float32 sum over tokens of router probabilities (differentiable).
        z_sum: scalar float32 sum over tokens of ``logsumexp(logits)**2`` (differentiable).
        num_tokens: T.
    """
    tokens_per_expert: torch.Tensor
    prob_sum: torch.Tensor
    z_sum: torch.Tensor
    num_tokens: int


# Pytree nodes, so FSDP2 / activation-checkpoint hooks see the tensors a layer returns inside them.
torch.export.register_dataclass(RouterOutput)
torch.export.register_dataclass(RouterStats)


def checked_replay_ids(ids: torch.Tensor, num_tokens: int, top_k: int, num_experts: int,
                       device: torch.device) -> torch.Tensor:
    """Recorded expert ids for a router's ``replay_topk_ids``, checked and as int64 on `device`.

    Args:
        ids: ``[T, K]`` integer expert ids (any integer dtype, any device).
        num_tokens, top_k, num_experts: T, K and E of the router call.

    Returns:
        ``[T, K]`` int64 on `device`.

    Raises:
        ValueError: another shape, or an id outside ``[0, E)``.
    """
    if tuple(ids.shape) != (num_tokens, top_k):
        raise ValueError(f"routing replay: recorded expert ids have shape {tuple(ids.shape)} but this router "
                         f"call has [T={num_tokens}, K={top_k}] (routed_experts must be [layers, T, top_k] "
                         f"of the same tokens)")
    ids = ids.to(device=device, dtype=torch.int64)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_experts):
        raise ValueError(f"routing replay: recorded expert ids must lie in [0, {num_experts}); got "
                         f"[{int(ids.min())}, {int(ids.max())}]")
    return ids


def topk_or_replay(scores: torch.Tensor, top_k: int, replay_ids: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, ids)`` ``[T, K]``: the top-k of ``scores [T, E]``, or, with recorded ``replay_ids``
    (checked by :func:`checked_replay_ids`), those experts and the scores gathered at them
    (differentiable in ``scores``)."""
    if replay_ids is None:
        return torch.topk(scores, top_k, dim=-1)
    ids = checked_replay_ids(replay_ids, scores.shape[0], top_k, scores.shape[1], scores.device)
    return scores.gather(1, ids), ids


class TopKRouter(nn.Module):
    """Softmax top-k router (Qwen3-MoE / Mixtral style); the HF key is ``mlp.gate.weight``.

    Args:
        hidden_size: D.
        num_experts: E (``weight`` is ``[E, D]``, like ``nn.Linear(D, E, bias=False)``).
        top_k: K (``num_experts_per_tok``).
        norm_topk_prob: renormalise the K chosen probabilities to sum to 1.

    Raises:
        ValueError: ``top_k`` not in ``[1, num_experts]``.
    """

    #: compute in fp32 with autocast off: bf16 compute copies of the weight are not made
    #: (xt.core.engine.compute_weights; docs/contracts.md, Model)
    xt_fp32_weights = True

    #: Routing-replay seam (:mod:`xt.models.common.routing_replay`): ``[T, K]`` int expert ids that
    #: replace the top-k choice while set (weights still come from the live logits); None = route.
    replay_topk_ids: torch.Tensor | None = None

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, norm_topk_prob: bool) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"num_experts_per_tok={top_k} must be in [1, num_experts={num_experts}]")
        self.num_experts = num_experts
        self.top_k = top_k
        self.norm_topk_prob = norm_topk_prob
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))
        nn.init.normal_(self.weight, std=0.02)

    def xt_init_rules(self, std: float) -> dict:
        """Init rules: the router weight normal(0, `std`)."""
        return {"weight": InitRule("normal", std)}

    def forward(self, x: torch.Tensor) -> RouterOutput:
        """Route ``x[T, D]`` (any float dtype).

        With ``replay_topk_ids`` set, those experts are used instead of the top-k and their weights
        are the live probabilities gathered at them (renormalised as usual), so gradients still
        reach ``weight``.

        Returns:
            :class:`RouterOutput`: float32 ``logits``/``probs [T, E]``, int64 ``topk_ids [T, K]``,
            float32 ``topk_weights [T, K]``; computed in float32 also inside a bf16 autocast region.

        Raises:
            ValueError: ``replay_topk_ids`` whose shape is not ``[T, K]`` or whose ids are outside ``[0, E)``.
        """
        # Autocast off: it would run F.linear in bf16 and change which experts win the top-k.
        with fp32_region(x):
            logits = F.linear(x.float(), self.weight.float())
            probs = torch.softmax(logits, dim=-1)
            topk_weights, topk_ids = topk_or_replay(probs, self.top_k, self.replay_topk_ids)
            if self.norm_topk_prob:
                topk_weights = topk_weights / topk_weights.sum(dim=-1, keepdim=True)
        return RouterOutput(logits, probs, topk_ids, topk_weights)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, top_k={self.top_k}, norm_topk_prob={self.norm_topk_prob}"


def router_stats(out: RouterOutput, num_experts: int) -> RouterStats:
    """Sums over the tokens of one layer (see :class:`RouterStats`), in float32 with autocast off.

    Args:
        out: the layer's :class:`RouterOutput` (``logits``/``probs [T, E]``, ``topk_ids [T, K]``).
        num_experts: E.

    Returns:
        :class:`RouterStats` with float32 tensors.

    Raises:
        IndexError / RuntimeError: (from ``index_add_``) an id outside ``[0, num_experts)``.
    """
    # Autocast off: the aux-loss statistics are float32 whatever the forward's autocast dtype.
    with fp32_region(out.logits):
        counts = torch.zeros(num_experts, dtype=torch.float32, device=out.topk_ids.device)
        counts.index_add_(0, out.topk_ids.reshape(-1), torch.ones(out.topk_ids.numel(), device=counts.device))
        z = torch.logsumexp(out.logits.float(), dim=-1).pow(2).sum()
        return RouterStats(counts, out.probs.float().sum(dim=0), z, out.logits.shape[0])


def load_balancing_loss(stats: list[RouterStats]) -> torch.Tensor:
    """Switch-style aux loss over the MoE layers of one forward pass (formula in the module docstring).

    Returns a float32 scalar (autocast off) **without** the ``router_aux_loss_coef`` factor; 0 for no tokens.

    Raises:
        ValueError: empty ``stats``.
    """
    if not stats:
        raise ValueError("load_balancing_loss needs the stats of at least one MoE layer")
    rows = sum(s.num_tokens for s in stats)
    num_experts = stats[0].prob_sum.shape[0]
    # Autocast off: the aux loss is computed in float32 (see the module docstring).
    with fp32_region(stats[0].prob_sum):
        if rows == 0:
            return stats[0].prob_sum.float().sum() * 0.0
        f = torch.stack([s.tokens_per_expert.float() for s in stats]).sum(0) / rows
        p = torch.stack([s.prob_sum.float() for s in stats]).sum(0) / rows
        return num_experts * (f * p).sum()


def z_loss(stats: list[RouterStats]) -> torch.Tensor:
    """Router z-loss: mean over layers and tokens of ``logsumexp(logits)**2``.

    Returns a float32 scalar (autocast off) **without** the ``router_z_loss_coef`` factor; 0 for no tokens.

    Raises:
        ValueError: empty ``stats``.
    """
    if not stats:
        raise ValueError("z_loss needs the stats of at least one MoE layer")
    rows = sum(s.num_tokens for s in stats)
    # Autocast off: the aux loss is computed in float32 (see the module docstring).
    with fp32_region(stats[0].z_sum):
        total = torch.stack([s.z_sum.float() for s in stats]).sum()
        return total / rows if rows else total * 0.0
