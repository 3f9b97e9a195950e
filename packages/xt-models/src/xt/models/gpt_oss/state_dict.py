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
from typing import Callable

import torch

from xt.models.common.expert_keys import renamed_view, tie_head
from xt.models.gpt_oss.config import GptOssConfig

__all__ = ["from_hf", "hf_rows", "hf_to_xt", "xt_to_hf", "dequantize_mxfp4", "FP4_E2M1_VALUES"]

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


def _rename(key: str) -> str | None:
    """Hub key -> XT key (router -> ``mlp.gate``; MXFP4 ``_blocks`` -> the weight; ``_scales`` skipped)."""
    if ".mlp.router." in key:
        return key.replace(".mlp.router.", ".mlp.gate.")
    m = _EXPERT.match(key)
    if m is None:
        return key
    suffix = m.group(3) or ""
    if suffix == "_scales":
        return None  # read with its blocks
    return f"{m.group(1)}experts.{m.group(2)}" + ("_bias" if suffix == "_bias" else "")


def _load(key: str, read: Callable[[str], torch.Tensor], key_set: set[str], source: str,
          mxfp4_dtype: torch.dtype) -> torch.Tensor:
    """The XT tensor of hub key `key` (read through `read`): experts de-interleaved and transposed,
    MXFP4 blocks dequantised with their scales. Every expert tensor has the experts on dim 0, so
    `read` may give any range of experts (the sharded load) and the result is those experts'."""
    m = _EXPERT.match(key)
    if m is None:
        return read(key)
    proj, suffix = m.group(2), m.group(3) or ""
    if suffix == "_bias":
        return _deinterleave(read(key)) if proj == "gate_up_proj" else read(key)
    if suffix == "_blocks":
        scales = key[: -len("_blocks")] + "_scales"
        if scales not in key_set:
            raise ValueError(f"{source} has {key} but not {scales}")
        w = dequantize_mxfp4(read(key), read(scales), mxfp4_dtype)  # already [E, out, in]
        return _deinterleave(w.transpose(1, 2)).transpose(1, 2).contiguous() if proj == "gate_up_proj" else w
    w = read(key)  # [E, in, out]
    return (_deinterleave(w) if proj == "gate_up_proj" else w).transpose(1, 2).contiguous()


def hf_rows(config: GptOssConfig, keys: set[str], mxfp4_dtype: torch.dtype = torch.bfloat16):
    """The sharded-load view of a GPT-OSS checkpoint (``ModelSpec.hf_rows``, :mod:`xt.models.hf_rows`):
    ``(rename, load_rows)``. Rows of an expert tensor are experts, so ``load_rows`` reads those
    experts' rows of the fused (or MXFP4 blocks + scales) hub tensors and transforms them as
    :func:`from_hf` does; other tensors are read as stored."""
    def load_rows(key: str, get_rows: Callable[[str, int, int], torch.Tensor], start: int, stop: int) -> torch.Tensor:
        return _load(key, lambda k: get_rows(k, start, stop), keys, "checkpoint", mxfp4_dtype)
    return _rename, load_rows


def from_hf(keys: list[str], get: Callable[[str], torch.Tensor], config: GptOssConfig,
            source: str = "checkpoint", mxfp4_dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """HF GPT-OSS checkpoint keys (bf16/fp32 or MXFP4 experts) -> XT state dict, one tensor at a time.

    MXFP4 blocks/scales are dequantised to ``mxfp4_dtype`` as they are read; the fused experts are
    de-interleaved and transposed to XT's layout (module docstring).

    Raises:
        ValueError: a ``_blocks`` key without its ``_scales``.
    """
    key_set = set(keys)

    def load(key: str, read: Callable[[str], torch.Tensor]) -> torch.Tensor:
        return _load(key, read, key_set, source, mxfp4_dtype)

    xt_keys, read = renamed_view(keys, get, _rename, load)
    return tie_head({k: read(k) for k in xt_keys}, config.tie_word_embeddings, source)


def hf_to_xt(sd: dict[str, torch.Tensor], config: GptOssConfig,
             mxfp4_dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """`from_hf` over an in-memory HF state dict."""
    return from_hf(list(sd), sd.__getitem__, config, mxfp4_dtype=mxfp4_dtype)


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
