"""MoE kernels: grouped GEMM over expert-sorted rows and token permutation.

Shape legend used throughout this sub-package:
  T tokens, K top-k (``num_experts_per_tok``), R = T*K routed rows, E experts,
  D hidden size, F expert intermediate size.

Backends are chosen per op by :mod:`xt.kernels.moe.backends` (``set_backend``/``dispatch``).
"""
from xt.kernels.moe.grouped_gemm import grouped_gemm, grouped_gemm_reference
from xt.kernels.moe.permute import PermuteInfo, permute, unpermute
from xt.kernels.moe.swiglu_experts import swiglu_experts, swiglu_experts_reference

__all__ = ["grouped_gemm", "grouped_gemm_reference", "permute", "unpermute", "PermuteInfo", "swiglu_experts",
           "swiglu_experts_reference"]
