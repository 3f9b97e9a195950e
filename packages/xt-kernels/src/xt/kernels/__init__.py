"""XT kernels: grouped GEMM, token permutation, fused loss (Triton, torch, reference, NPU backends)."""

from xt.kernels import optim  # noqa: F401 - registers optim.impl = "fused_bf16_refresh"
from xt.kernels._autocast import autocast_dtype, autocast_inputs

__all__ = ["autocast_dtype", "autocast_inputs"]
