"""Rotary position embeddings with context-extension scaling: YaRN (DeepSeek-V3, GPT-OSS, Kimi K2) and
Llama-3 frequency smoothing, plus the rotation itself (half-split and interleaved pair layouts).

Shape legend: T tokens, H heads, R rotary dims (``2 * len(inv_freq)``).

References:
  * RoFormer (Su et al., 2021), rotary embeddings.
  * YaRN (Peng et al., 2023, arXiv:2309.00071): per-frequency interpolation ramp between
    ``beta_fast`` and ``beta_slow`` rotations and the attention temperature ``0.1 ln(s) + 1``.
  * DeepSeek-V2/V3 technical reports: the ``mscale`` / ``mscale_all_dim`` variant of the temperature,
    applied to the softmax scale instead of cos/sin.
  * Llama 3.1 (Meta, 2024): ``low_freq_factor`` / ``high_freq_factor`` smoothing.
The parameter names follow the HF ``config.json`` ``rope_parameters`` / ``rope_scaling`` dict.
"""
from __future__ import annotations

import math

import torch

__all__ = ["yarn_get_mscale", "rope_inv_freq", "rope_cos_sin", "apply_rope", "softmax_scale_mscale"]


def yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN attention temperature ``0.1 * mscale * ln(scale) + 1`` (1 when ``scale <= 1``)."""
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def _param(params: dict, key: str, default=None):
    v = params.get(key, default)
    return default if v is None else v


def rope_inv_freq(params: dict, dim: int, max_position_embeddings: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and the cos/sin scale for one rope configuration.

    Args:
        params: HF ``rope_parameters`` dict: ``rope_type`` in ``default``/``linear``/``yarn``/``llama3``,
            ``rope_theta`` and the type's own keys (``factor``, ``beta_fast``, ``beta_slow``, ``mscale``,
            ``mscale_all_dim``, ``attention_factor``, ``original_max_position_embeddings``, ``truncate``,
            ``low_freq_factor``, ``high_freq_factor``).
        dim: rotary dimension R (even).
        max_position_embeddings: the model's context length (used when ``factor`` is absent for YaRN).

    Returns:
        ``(inv_freq [R/2] float32, attention_factor)``; cos and sin get multiplied by
        ``attention_factor`` (1.0 except for YaRN).

    Raises:
        ValueError: unknown ``rope_type``, odd ``dim`` or a missing required key.
    """
    if dim % 2:
        raise ValueError(f"rope: rotary dim must be even, got {dim}")
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if "rope_theta" not in params:
        raise ValueError("rope_parameters: missing 'rope_theta'")
    base = float(params["rope_theta"])
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if rope_type == "default":
        return inv_freq, 1.0
    if rope_type == "linear":
        return inv_freq / float(params["factor"]), 1.0
    if rope_type == "llama3":
        return _llama3(inv_freq, params), 1.0
    if rope_type == "yarn":
        return _yarn(params, dim, base, max_position_embeddings)
    raise ValueError(f"rope_parameters.rope_type: {rope_type!r} is not supported "
                     "(allowed: default, linear, llama3, yarn)")


def _llama3(inv_freq: torch.Tensor, params: dict) -> torch.Tensor:
    factor = float(params["factor"])
    low, high = float(params["low_freq_factor"]), float(params["high_freq_factor"])
    old_len = float(params["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)


def _yarn(params: dict, dim: int, base: float, max_pos: int) -> tuple[torch.Tensor, float]:
    if "original_max_position_embeddings" not in params:
        raise ValueError("rope_parameters (yarn): missing 'original_max_position_embeddings'")
    orig = float(params["original_max_position_embeddings"])
    factor = params.get("factor")
    factor = float(factor) if factor is not None else max_pos / orig
    attention_factor = params.get("attention_factor")
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_get_mscale(factor)
    beta_fast = float(_param(params, "beta_fast", 32))
    beta_slow = float(_param(params, "beta_slow", 1))
    truncate = params.get("truncate", True)

    def correction_dim(rotations: float) -> float:
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp  # 1 = keep the original (high) frequency
    return interpolation * (1 - keep) + extrapolation * keep, float(attention_factor)


def softmax_scale_mscale(params: dict | None, scale: float) -> float:
    """DeepSeek's softmax-scale correction: ``scale * mscale(factor, mscale_all_dim)**2`` for scaled rope.

    Returns ``scale`` unchanged for ``rope_type == "default"`` or when ``mscale_all_dim`` is 0/absent.
    """
    if not params or params.get("rope_type", params.get("type", "default")) == "default":
        return scale
    m = params.get("mscale_all_dim") or 0
    if m:
        s = yarn_get_mscale(float(params["factor"]), float(m))
        scale = scale * s * s
    return scale


def rope_cos_sin(position_ids: torch.Tensor, inv_freq: torch.Tensor, attention_factor: float,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` of ``position * inv_freq`` for each token.

    Args:
        position_ids: ``[...]`` int64 positions (any leading shape).
        inv_freq: ``[R/2]`` float32.
        attention_factor: multiplies cos and sin (YaRN temperature).
        dtype: output dtype (the activations' dtype).

    Returns:
        ``(cos, sin)`` each ``[..., R/2]`` (angles computed in float32).
    """
    freqs = position_ids[..., None].float() * inv_freq.to(device=position_ids.device, dtype=torch.float32)
    return (freqs.cos() * attention_factor).to(dtype), (freqs.sin() * attention_factor).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Rotate the last dim of ``x`` by the per-token angles.

    Args:
        x: ``[T, H, R]`` (or ``[..., T, H, R]``).
        cos, sin: ``[T, R/2]`` from :func:`rope_cos_sin` (broadcast over heads).
        interleaved: ``False``: pairs are ``(x[i], x[i + R/2])`` (Llama, GPT-OSS); ``True``: pairs are
            ``(x[2i], x[2i+1])`` and the output is written half-split (DeepSeek ``rope_interleave``,
            equal to de-interleaving then rotating).

    Returns:
        Tensor shaped like ``x``.
    """
    c, s = cos.unsqueeze(-2), sin.unsqueeze(-2)
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
    else:
        x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


def _register_with_common_rope() -> None:
    """Make ``yarn`` and ``llama3`` available to :class:`xt.models.common.rope.RotaryEmbedding`."""
    from xt.models.common.rope import ROPE_INIT_FUNCTIONS, register_rope_type

    def make(kind: str):
        def fn(head_dim: int, rope_theta: float, params: dict) -> tuple[torch.Tensor, float]:
            full = {**params, "rope_type": kind, "rope_theta": rope_theta}
            return rope_inv_freq(full, head_dim, int(params.get("max_position_embeddings", 0)))
        fn.__doc__ = f"``{kind}`` rope scaling via :func:`xt.models.common.yarn.rope_inv_freq`."
        return fn

    for kind in ("yarn", "llama3"):
        if kind not in ROPE_INIT_FUNCTIONS:
            register_rope_type(kind, make(kind))


_register_with_common_rope()
