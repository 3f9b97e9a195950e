"""``[kernels]`` config section: which backend runs each kernel op (see :mod:`xt.kernels.registry`).

Example (TOML)::

    [kernels]
    grouped_gemm = "auto"   # auto | triton | torch | reference | npu
    permute = "auto"        # also sets unpermute
    loss = "auto"           # fused linear cross-entropy (also sets log_probs)
    rms_norm = "auto"       # RMSNorm (+ residual add): compiled on CUDA
    rope = "auto"           # rotary embeddings: compiled on CUDA
"""
from __future__ import annotations

from typing import Literal

import msgspec

from xt.kernels.registry import BACKENDS, set_backend

__all__ = ["KernelsConfig", "apply_kernels_config"]

Backend = Literal["auto", "triton", "torch", "reference", "npu"]


class KernelsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Backend per op. Each field is one of ``auto``, ``triton``, ``torch``, ``reference``, ``npu``.

    Attributes:
        grouped_gemm: MoE expert grouped GEMM (``auto`` times Triton vs ``torch._grouped_mm`` on CUDA).
        permute: token permute/unpermute (``auto``: Triton on CUDA, torch ops elsewhere).
        loss: fused linear cross-entropy and the per-token ``log_probs`` op (``auto``: Triton on
            CUDA, torch ops elsewhere).
        rms_norm: RMSNorm with its residual add (``auto``/``triton``: ``torch.compile``-fused on
            CUDA; ``torch``: eager ops; :mod:`xt.kernels.norm`).
        rope: rotary embeddings (as ``rms_norm``).

    Raises:
        ValueError: (at construction) a field that is not a known backend name; decoding with
            msgspec raises ``msgspec.ValidationError`` naming the field (``$.kernels.grouped_gemm``).
    """
    grouped_gemm: Backend = "auto"
    permute: Backend = "auto"
    loss: Backend = "auto"
    rms_norm: Backend = "auto"
    rope: Backend = "auto"

    def __post_init__(self) -> None:
        for field in self.__struct_fields__:
            value = getattr(self, field)
            if value not in BACKENDS:
                raise ValueError(f"kernels.{field}: unknown backend {value!r}; expected one of {BACKENDS}")


def apply_kernels_config(cfg: KernelsConfig) -> None:
    """Make ``cfg``'s choices the process-wide backends (``xt.kernels.registry.set_backend``)."""
    set_backend("grouped_gemm", cfg.grouped_gemm)
    set_backend("permute", cfg.permute)
    set_backend("loss", cfg.loss)
    set_backend("rms_norm", cfg.rms_norm)
    set_backend("rope", cfg.rope)
