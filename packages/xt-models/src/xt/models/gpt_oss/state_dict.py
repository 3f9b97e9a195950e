"""GPT-OSS HF checkpoint key mapping (both ways), including MXFP4 expert weights (dequantised).

HF layout (transformers 5 ``save_pretrained`` and the hub bf16 checkpoints), per layer ``l``:
  * ``model.layers.l.mlp.experts.gate_up_proj [E, D, 2F]`` (x @ W form; columns interleave
    gate/up: ``[..., 0::2]`` gate, ``[..., 1::2]`` up), ``gate_up_proj_bias [E, 2F]`` interleaved;
  * ``down_proj [E, F, D]``, ``down_proj_bias [E, D]``; ``mlp.router.{weight,bias}``.
XT layout: see :class:`xt.models.gpt_oss.moe.GptOssExperts` (``[E, 2F, D]`` gate rows then up rows,
``[E, D, F]``); the router lives at ``mlp.gate``. The mapping is a pure permutation: round trips are
bit-exact.

MXFP4 (OpenAI hub checkpoints): ``gate_up_proj_blocks [E, 2F, D/32, 16] uint8`` (two e2m1 values
per byte, low nibble first) and ``gate_up_proj_scales [E, 2F, D/32] uint8`` (e8m0, exponent bias
127); same for ``down_proj`` with ``[E, D, F/32, 16]``. Reference: OCP Microscaling Formats (MX)
v1.0 specification; layout as read by transformers' ``integrations/mxfp4.py``.
"""
from __future__ import annotations

import re

import torch

from xt.models.gpt_oss.config import GptOssConfig

__all__ = ["hf_to_xt", "xt_to_hf", "dequantize_mxfp4", "FP4_E2M1_VALUES"]

FP4_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
_EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.)experts\.(gate_up_proj|down_proj)(_bias|_blocks|_scales)?$")


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """MXFP4 ``blocks [E, N, G, 16] uint8`` + ``scales [E, N, G] uint8`` -> ``[E, N, G*32]`` in ``dtype``.

    Element ``2j`` of a 32-block is the low nibble of byte ``j``, ``2j+1`` the high nibble; the value
    is ``e2m1(nibble) * 2**(scale - 127)`` (exact in bf16/fp32).

    Raises:
        ValueError: shapes that do not match.
    """
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != 16:
        raise ValueError(f"mxfp4: blocks {tuple(blocks.shape)} must be scales {tuple(scales.shape)} + (16,)")
    lut = torch.tensor(FP4_E2M1_VALUES, dtype=torch.float32, device=blocks.device)
    b = blocks.to(torch.int64)
    vals = torch.stack([lut[b & 0x0F], lut[b >> 4]], dim=-1).flatten(-2)  # [E, N, G, 32]
    vals = torch.ldexp(vals, (scales.to(torch.int32) - 127).unsqueeze(-1).to(torch.float32))
    return vals.flatten(-2).to(dtype)


def _deinterleave(t: torch.Tensor) -> torch.Tensor:
    return torch.cat([t[..., 0::2], t[..., 1::2]], dim=-1)


def _interleave(t: torch.Tensor) -> torch.Tensor:
    half = t.shape[-1] // 2
    return torch.stack([t[..., :half], t[..., half:]], dim=-1).flatten(-2)


def hf_to_xt(sd: dict[str, torch.Tensor], config: GptOssConfig,
             mxfp4_dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """HF GPT-OSS state dict (bf16/fp32 or MXFP4 experts) -> XT state dict.

    MXFP4 blocks/scales are dequantised to ``mxfp4_dtype``. Raises ValueError on a blocks key
    without its scales.
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = _EXPERT.match(k)
        if k.endswith(".mlp.router.weight") or k.endswith(".mlp.router.bias"):
            out[k.replace(".mlp.router.", ".mlp.gate.")] = v
        elif m is None:
            out[k] = v
        else:
            prefix, proj, suffix = m.group(1), m.group(2), m.group(3) or ""
            name = f"{prefix}experts.{proj}"
            if suffix == "_scales":
                continue
            if suffix == "_blocks":
                sk = f"{name}_scales"
                if sk not in sd:
                    raise ValueError(f"checkpoint has {k} but not {sk}")
                out[name] = dequantize_mxfp4(v, sd[sk], mxfp4_dtype)  # already [E, out, in]
                if proj == "gate_up_proj":
                    out[name] = _deinterleave(out[name].transpose(1, 2)).transpose(1, 2).contiguous()
            elif suffix == "_bias":
                out[name + "_bias"] = _deinterleave(v) if proj == "gate_up_proj" else v
            elif proj == "gate_up_proj":
                out[name] = _deinterleave(v).transpose(1, 2).contiguous()
            else:
                out[name] = v.transpose(1, 2).contiguous()
    if config.tie_word_embeddings:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def xt_to_hf(sd: dict[str, torch.Tensor], config: GptOssConfig) -> dict[str, torch.Tensor]:
    """XT state dict -> HF GPT-OSS state dict (unquantised fused experts, transformers 5 layout)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = _EXPERT.match(k)
        if k.endswith(".mlp.gate.weight") or k.endswith(".mlp.gate.bias"):
            out[k.replace(".mlp.gate.", ".mlp.router.")] = v
        elif m is None:
            out[k] = v
        elif m.group(3) == "_bias":
            out[k] = _interleave(v) if m.group(2) == "gate_up_proj" else v
        elif m.group(2) == "gate_up_proj":
            out[k] = _interleave(v.transpose(1, 2)).contiguous()
        else:
            out[k] = v.transpose(1, 2).contiguous()
    if config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out
