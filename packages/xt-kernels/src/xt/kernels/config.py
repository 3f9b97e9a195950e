"""`KernelsConfig`: the ``[kernels]`` section of a training config (backend per op)."""
from __future__ import annotations

from typing import Literal

from xt.core.config import ConfigStruct
from xt.kernels.moe.backends import set_backend

__all__ = ["KernelsConfig", "apply_kernels_config"]

Backend = Literal["auto", "triton", "torch", "reference", "npu"]


class KernelsConfig(ConfigStruct):
    """Which implementation runs each kernel op (see :mod:`xt.kernels.moe.backends`).

    Attributes:
        grouped_gemm: MoE expert grouped GEMM: "auto" (fastest measured on the device),
            "triton", "torch" (``torch._grouped_mm``), "reference" (plain PyTorch loop), "npu".
        permute: token permute/unpermute backend (same names).
        loss: fused linear cross-entropy backend (same names).
    """

    grouped_gemm: Backend = "auto"
    permute: Backend = "auto"
    loss: Backend = "auto"


def apply_kernels_config(cfg: KernelsConfig) -> None:
    """Set the process-wide backends from `cfg`.

    Raises:
        ValueError: an op or backend name the registry does not know.
    """
    set_backend("grouped_gemm", cfg.grouped_gemm)
    set_backend("permute", cfg.permute)
    set_backend("loss", cfg.loss)
