"""Rotary position embedding (Su et al. 2021, "RoFormer", arXiv:2104.09864), "rotate-half" layout.

Layout as in HF transformers' Llama/Qwen models: the head dimension is split into two halves
``(x1, x2)`` and rotated as ``(x1*cos - x2*sin, x2*cos + x1*sin)`` with frequency ``i`` shared by
``x1[i]`` and ``x2[i]``.

Scaling variants (linear, YaRN, ...) plug in through :data:`ROPE_INIT_FUNCTIONS`: a function
``fn(head_dim, rope_theta, params) -> (inv_freq[head_dim // 2] fp32, attention_scaling)`` keyed by
HF's ``rope_parameters["rope_type"]``. Register new ones with :func:`register_rope_type`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from xt.kernels.norm import rope

__all__ = ["ROPE_INIT_FUNCTIONS", "register_rope_type", "RotaryEmbedding", "apply_rotary"]

RopeInitFn = Callable[[int, float, dict[str, Any]], tuple[torch.Tensor, float]]


def _default_inv_freq(head_dim: int, rope_theta: float, params: dict[str, Any]) -> tuple[torch.Tensor, float]:
    """Plain RoPE: ``inv_freq[i] = theta ** (-2i / head_dim)``; attention scaling 1."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    return 1.0 / (rope_theta ** exponent), 1.0


def _linear_inv_freq(head_dim: int, rope_theta: float, params: dict[str, Any]) -> tuple[torch.Tensor, float]:
    """Position interpolation (Chen et al. 2023, arXiv:2306.15595): ``inv_freq / factor``."""
    factor = params.get("factor")
    if not isinstance(factor, (int, float)) or factor <= 0:
        raise ValueError(f"rope_parameters.factor must be a positive number for rope_type 'linear'; got {factor!r}")
    inv_freq, scale = _default_inv_freq(head_dim, rope_theta, params)
    return inv_freq / float(factor), scale


ROPE_INIT_FUNCTIONS: dict[str, RopeInitFn] = {"default": _default_inv_freq, "linear": _linear_inv_freq}


def register_rope_type(name: str, fn: RopeInitFn) -> None:
    """Add a RoPE variant: ``fn(head_dim, rope_theta, rope_parameters) -> (inv_freq, attention_scaling)``."""
    ROPE_INIT_FUNCTIONS[name] = fn


class RotaryEmbedding(nn.Module):
    """Computes ``cos, sin [T, head_dim]`` (float32) from ``position_ids[T]``.

    ``inv_freq`` is recomputed on the fly (``head_dim/2`` values), so the module holds no state
    and is safe to build on the meta device.

    Args:
        head_dim: rotary dimension (whole head here).
        rope_theta: base ``theta``.
        rope_parameters: HF ``rope_parameters`` dict (``rope_type`` plus variant fields) or None.

    Raises:
        ValueError: unknown ``rope_type`` (the message lists the known ones) or odd ``head_dim``.
    """

    def __init__(self, head_dim: int, rope_theta: float, rope_parameters: dict[str, Any] | None = None) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE; got {head_dim}")
        self.head_dim = head_dim
        self.rope_theta = float(rope_theta)
        self.rope_parameters = dict(rope_parameters or {})
        self.rope_type = self.rope_parameters.get("rope_type", "default")
        if self.rope_type not in ROPE_INIT_FUNCTIONS:
            raise ValueError(f"rope_parameters.rope_type={self.rope_type!r} is not supported; "
                             f"known: {sorted(ROPE_INIT_FUNCTIONS)}")
        # Validate variant parameters at build time.
        ROPE_INIT_FUNCTIONS[self.rope_type](head_dim, self.rope_theta, self.rope_parameters)

    def _inv_freq(self, device: torch.device) -> tuple[torch.Tensor, float]:
        # computed on the host once per device and kept (not a buffer: no state, meta-safe); copying
        # it in every forward would synchronise the host with the GPU each time
        cache = self.__dict__.setdefault("_inv_freq_cache", {})
        if device not in cache:
            inv_freq, scale = ROPE_INIT_FUNCTIONS[self.rope_type](self.head_dim, self.rope_theta, self.rope_parameters)
            cache[device] = (inv_freq.to(device), scale)
        return cache[device]

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``position_ids[...]`` int -> ``(cos, sin)`` each ``[..., head_dim]`` float32."""
        inv_freq, scale = self._inv_freq(position_ids.device)
        freqs = position_ids.to(torch.float32)[..., None] * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos() * scale, emb.sin() * scale

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, rope_theta={self.rope_theta}, rope_type={self.rope_type}"


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x[T, H, head_dim]`` by ``cos/sin [T, head_dim]``; math in float32, result in ``x.dtype``
    (`xt.kernels.norm.rope`: one fused op on CUDA, backend ``kernels.rope``)."""
    return rope(x, cos, sin)
