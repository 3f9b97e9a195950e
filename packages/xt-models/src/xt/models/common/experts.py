"""Stacked SwiGLU experts computed with ``xt.kernels.moe.swiglu_experts`` (grouped GEMMs with the
activation fused into their epilogues where the Triton kernels run).

Shape legend: R routed rows (sorted by expert), D hidden size, F expert intermediate size
(``moe_intermediate_size``), E_local experts held here.

Weight layout (the HF transformers 5 fused layout, ``nn.Linear`` style ``[out, in]`` per expert):
  * ``gate_up_proj [E_local, 2F, D]``: rows ``0..F-1`` are expert e's ``gate_proj.weight``,
    rows ``F..2F-1`` its ``up_proj.weight``.
  * ``down_proj [E_local, D, F]``: expert e's ``down_proj.weight``.

The module knows nothing about meshes: ``num_local_experts`` is read from the weight shape, so
expert parallelism shards dimension 0 and swaps the dispatcher.
"""
from __future__ import annotations

import torch
from torch import nn

from xt.core.seeded_init import InitRule
from xt.kernels.moe import swiglu_experts

__all__ = ["GroupedExperts"]


class GroupedExperts(nn.Module):
    """E SwiGLU experts: ``y = down(silu(gate(x)) * up(x))`` per expert, rows grouped by expert.

    Args:
        num_experts: E (local experts at construction; may be re-sharded later).
        hidden_size: D.
        intermediate_size: F.
        backend: ``grouped_gemm`` backend name or None (the process-wide choice).
        init_std: std of the normal initialisation.

    An expert that receives no rows gets exactly zero gradient (its weights take part in no product).
    """

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int,
                 backend: str | None = None, init_std: float = 0.02) -> None:
        super().__init__()
        self.backend = backend
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))
        self.init_std = init_std
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) initialisation of both stacked weights."""
        nn.init.normal_(self.gate_up_proj, std=self.init_std)
        nn.init.normal_(self.down_proj, std=self.init_std)

    def xt_init_rules(self, std: float) -> dict:
        """Init rules (:func:`xt.models.common.init.init_rules`): both stacked weights normal(0, `std`)."""
        return {"gate_up_proj": InitRule("normal", std), "down_proj": InitRule("normal", std)}

    @property
    def num_local_experts(self) -> int:
        """E_local, from ``gate_up_proj.shape[0]``."""
        return self.gate_up_proj.shape[0]

    @property
    def intermediate_size(self) -> int:
        """F."""
        return self.down_proj.shape[-1]

    def forward(self, x_sorted: torch.Tensor, tokens_per_expert: torch.Tensor) -> torch.Tensor:
        """Apply the experts.

        Args:
            x_sorted: ``[R, D]`` rows sorted by local expert.
            tokens_per_expert: ``[E_local]`` integer counts summing to R.

        Returns:
            ``[R, D]`` in ``x_sorted.dtype``.

        Raises:
            ValueError: (from ``swiglu_experts``) counts or shapes that disagree.
        """
        return swiglu_experts(x_sorted, self.gate_up_proj, self.down_proj, tokens_per_expert, backend=self.backend)

    def extra_repr(self) -> str:
        E, F2, D = self.gate_up_proj.shape
        return f"num_local_experts={E}, hidden_size={D}, intermediate_size={F2 // 2}, backend={self.backend!r}"
