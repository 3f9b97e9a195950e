"""DeepSeek-V3 router: sigmoid affinities, group-limited top-k with the auxiliary-loss-free bias, and
the complementary sequence-wise balance loss.

Shape legend: T tokens, D hidden size, E routed experts, K top-k, G groups (``n_group``), Dc documents.

Reference: DeepSeek-V3 Technical Report (arXiv:2412.19437) §2.1.2:
  * ``s = sigmoid(x W^T)`` (float32). Selection uses ``s + b`` (``e_score_correction_bias``), limited
    to the ``topk_group`` groups whose two best ``s + b`` sum highest; the combine weights use ``s``
    only, renormalised over the K chosen when ``norm_topk_prob``, times ``routed_scaling_factor``.
  * Auxiliary-loss-free balancing: after each step ``b_e += gamma * sign(mean_load - load_e)``, the
    load counted over the whole (global) batch (:meth:`SigmoidGroupRouter.update_bias`).
  * Sequence-wise loss (eqs. 17-20): per sequence of T_s tokens, ``f_e = E / (K T_s) * #{t: e in
    topk(t)}``, ``P_e = mean_t s_{t,e} / sum_j s_{t,j}``, ``L = alpha * sum_e f_e P_e``
    (:func:`sequence_balance_loss`, averaged over the documents of the micro-batch).

Numerics: the router and the sequence-wise loss run in float32 with autocast off
(:func:`~xt.models.common.fp32.fp32_region`), so a bf16 autocast forward routes like a float32 one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xt.core.seeded_init import InitRule
from xt.models.common.fp32 import fp32_region
from xt.models.common.router import RouterOutput, checked_replay_ids

__all__ = ["SigmoidGroupRouter", "sequence_balance_loss", "aux_free_bias_update"]


def aux_free_bias_update(bias: torch.Tensor, expert_load: torch.Tensor, speed: float) -> torch.Tensor:
    """``bias + speed * sign(mean(load) - load)``: raise under-loaded experts, lower over-loaded ones.

    Args:
        bias: ``[E]`` float32 current ``e_score_correction_bias``.
        expert_load: ``[E]`` routed-slot counts of the step over the global batch (any scale).
        speed: gamma (DeepSeek-V3: 0.001 for most of pre-training).

    Returns:
        the new ``[E]`` float32 bias (experts at exactly the mean load are unchanged).
    """
    load = expert_load.to(device=bias.device, dtype=torch.float32)
    return bias + speed * torch.sign(load.mean() - load)


class SigmoidGroupRouter(nn.Module):
    """DeepSeek-V3 gate (HF keys ``mlp.gate.weight [E, D]``, ``mlp.gate.e_score_correction_bias [E]``).

    Args:
        hidden_size: D. num_experts: E. top_k: K.
        n_group, topk_group: group-limited routing (``n_group`` must divide E; 1 disables it).
        routed_scaling_factor: multiplies the combine weights.
        norm_topk_prob: renormalise the K chosen affinities to sum to 1 (before the scaling).

    ``forward(x[T, D]) -> RouterOutput`` with ``logits`` (pre-sigmoid), ``probs`` = ``s`` (sigmoid
    affinities, float32), ``topk_ids [T, K]`` and ``topk_weights [T, K]`` float32. In training mode
    the routed-slot counts are added to the attribute ``load_acc [E]`` float32 (not a buffer, not in
    the state dict; None until the first training forward; read and reset by the model's
    ``post_optimizer_step``).
    """

    #: compute in fp32 with autocast off: bf16 compute copies of the weight are not made
    #: (xt.core.engine.compute_weights; docs/contracts.md, Model)
    xt_fp32_weights = True

    #: Routing-replay seam (:mod:`xt.models.common.routing_replay`): ``[T, K]`` int expert ids that
    #: replace the group-limited top-k while set (weights from the live sigmoid scores); None = route.
    replay_topk_ids: torch.Tensor | None = None

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, n_group: int = 1, topk_group: int = 1,
                 routed_scaling_factor: float = 1.0, norm_topk_prob: bool = True) -> None:
        super().__init__()
        if num_experts % n_group:
            raise ValueError(f"n_group={n_group} must divide n_routed_experts={num_experts}")
        self.num_experts, self.top_k = num_experts, top_k
        self.n_group, self.topk_group = n_group, topk_group
        self.routed_scaling_factor, self.norm_topk_prob = float(routed_scaling_factor), norm_topk_prob
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))
        nn.init.normal_(self.weight, std=0.02)
        self.register_buffer("e_score_correction_bias", torch.zeros(num_experts, dtype=torch.float32))
        self.load_acc: torch.Tensor | None = None  # created lazily on the routing device

    def xt_init_rules(self, std: float) -> dict:
        """Init rules: weight normal(0, `std`); the balancing bias (a buffer) starts at zero."""
        return {"weight": InitRule("normal", std), "e_score_correction_bias": InitRule("zeros")}

    def forward(self, x: torch.Tensor) -> RouterOutput:
        """Route ``x[T, D]`` (any float dtype); outputs as in the class docstring, float32 also
        inside a bf16 autocast region. With ``replay_topk_ids`` set, those experts replace the
        selection (bias and groups are not consulted) and the weights are the live scores at them.

        Raises:
            ValueError: ``replay_topk_ids`` not ``[T, K]`` or with ids outside ``[0, E)``.
        """
        # Autocast off: it would run F.linear in bf16 and change which experts win the top-k.
        with fp32_region(x):
            logits = F.linear(x.float(), self.weight.float())
            scores = logits.sigmoid()
            with torch.no_grad():
                if self.replay_topk_ids is not None:
                    topk_ids = checked_replay_ids(self.replay_topk_ids, x.shape[0], self.top_k,
                                                  self.num_experts, scores.device)
                else:
                    topk_ids = self._select(scores + self.e_score_correction_bias.float())
                if self.training:
                    counts = torch.bincount(topk_ids.reshape(-1), minlength=self.num_experts).float()
                    self.load_acc = counts if self.load_acc is None else self.load_acc.to(counts.device) + counts
            w = scores.gather(1, topk_ids)
            if self.norm_topk_prob:
                w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
            w = w * self.routed_scaling_factor
        return RouterOutput(logits, scores, topk_ids, w)

    def _select(self, choice: torch.Tensor) -> torch.Tensor:
        """``[T, K]`` ids: the top-k of ``choice [T, E]`` (= s + b) within the ``topk_group`` best groups."""
        if self.n_group > 1:
            T = choice.shape[0]
            group_scores = choice.view(T, self.n_group, -1).topk(2, dim=-1).values.sum(-1)
            keep = torch.zeros_like(group_scores, dtype=torch.bool)
            keep.scatter_(1, group_scores.topk(self.topk_group, dim=-1).indices, True)
            choice = choice.masked_fill(~keep.repeat_interleave(self.num_experts // self.n_group, dim=1),
                                        float("-inf"))
        return choice.topk(self.top_k, dim=-1).indices

    def _apply(self, fn, recurse: bool = True):
        """Like ``nn.Module._apply`` but ``e_score_correction_bias`` stays float32 (as HF keeps it):
        bias steps of ~1e-3 would vanish in bf16."""
        super()._apply(fn, recurse)
        if self.e_score_correction_bias.dtype != torch.float32:
            self.e_score_correction_bias = self.e_score_correction_bias.float()
        return self

    @torch.no_grad()
    def update_bias(self, expert_load: torch.Tensor, speed: float) -> None:
        """Apply :func:`aux_free_bias_update` in place with the step's global ``expert_load [E]``."""
        self.e_score_correction_bias.copy_(aux_free_bias_update(self.e_score_correction_bias, expert_load, speed))

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, top_k={self.top_k}, n_group={self.n_group}, "
                f"topk_group={self.topk_group}, routed_scaling_factor={self.routed_scaling_factor}, "
                f"norm_topk_prob={self.norm_topk_prob}")


def sequence_balance_loss(scores: torch.Tensor, topk_ids: torch.Tensor, doc_ids: torch.Tensor,
                          num_docs: int) -> torch.Tensor:
    """DeepSeek-V3 sequence-wise balance loss without its alpha, averaged over documents.

    Args:
        scores: ``[T, E]`` float32 sigmoid affinities (differentiable).
        topk_ids: ``[T, K]`` chosen experts.
        doc_ids: ``[T]`` int64 document of each token (``0..num_docs-1``).
        num_docs: Dc.

    Returns:
        float32 scalar ``mean_d sum_e f_{d,e} P_{d,e}`` (formula in the module docstring, computed in
        float32 with autocast off); empty documents are skipped.
    """
    T, E = scores.shape
    K = topk_ids.shape[1]
    # Autocast off: the aux loss is computed in float32 whatever the forward's autocast dtype.
    with fp32_region(scores):
        scores = scores.float()
        counts = torch.zeros(num_docs, E, dtype=torch.float32, device=scores.device)
        counts.index_put_((doc_ids.repeat_interleave(K), topk_ids.reshape(-1)),
                          torch.ones(T * K, device=scores.device), accumulate=True)
        lengths = torch.bincount(doc_ids, minlength=num_docs).float()
        norm = scores / scores.sum(dim=-1, keepdim=True)
        p = torch.zeros(num_docs, E, dtype=torch.float32, device=scores.device).index_add(0, doc_ids, norm)
        valid = lengths > 0
        lengths = lengths.clamp(min=1).unsqueeze(1)
        f = counts * E / (K * lengths)
        per_doc = (f * (p / lengths)).sum(-1)
        return per_doc[valid].mean() if bool(valid.any()) else scores.sum() * 0.0
