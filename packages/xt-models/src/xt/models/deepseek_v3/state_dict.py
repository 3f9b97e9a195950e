"""DeepSeek-V3 / Kimi K2 HF checkpoint key mapping (both ways).

HF hub layout (what ``save_pretrained`` writes and the hub checkpoints hold), MoE layer ``l``:
``model.layers.l.mlp.experts.{e}.{gate,up,down}_proj.weight`` (per expert, ``[F, D]``/``[D, F]``),
``mlp.gate.weight [E, D]``, ``mlp.gate.e_score_correction_bias [E]``,
``mlp.shared_experts.{gate,up,down}_proj.weight``. transformers' in-memory fused
``mlp.experts.gate_up_proj [E, 2F, D]`` / ``down_proj [E, D, F]`` is accepted on input too.
XT layout: ``mlp.experts.gate_up_proj [E, 2F, D]`` (gate rows then up rows), ``down_proj [E, D, F]``.
FP8 hub checkpoints (DeepSeek-V3, Kimi K2: ``quantization_config.quant_method = "fp8"``) store
linear weights as float8_e4m3 with ``{name}.weight_scale_inv [ceil(out/128), ceil(in/128)]`` float32
block scales; :func:`dequantize_fp8_blocks` turns them into ``weight * scale`` (bf16) on load.
MTP depth k (XT ``mtp.{k}.*``) is hub ``model.layers.{num_hidden_layers + k}.*``; the hub copies of the
shared embedding / head (``.embed_tokens.weight``, ``.shared_head.head.weight``) are written on save
and skipped on load.
"""
from __future__ import annotations

import re
from typing import Callable

import torch

from xt.models.common.expert_keys import renamed_view, stack_experts, tie_head
from xt.models.deepseek_v3.config import DeepseekV3Config

__all__ = ["from_hf", "hf_rows", "hf_to_xt", "xt_to_hf", "dequantize_fp8_blocks"]

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.*)$")


def dequantize_fp8_blocks(weight: torch.Tensor, scale_inv: torch.Tensor, block_size: tuple[int, int] = (128, 128),
                          dtype: torch.dtype = torch.bfloat16, row_offset: int = 0) -> torch.Tensor:
    """Block-wise FP8 weight ``[N, K]`` (float8_e4m3fn) times its scales ``[ceil(N/bn), ceil(K/bk)]``.

    Element ``(i, j)`` becomes ``float(weight[i, j]) * scale_inv[i // bn, j // bk]`` (in float32, then
    ``dtype``). Reference: DeepSeek-V3 report §3.3 (fine-grained FP8 quantisation, 128x128 weight blocks).
    With ``row_offset = o`` (a sharded load), `weight` holds the rows ``o .. o + N`` of a tensor
    whose block rows start at row 0 of `scale_inv` (``0 <= o < bn``): scales
    ``[ceil((o + N)/bn), ceil(K/bk)]``; each element gets the value it gets in the full tensor.

    Raises:
        ValueError: scales whose shape does not cover the weight with ``block_size`` blocks.
    """
    bn, bk = block_size
    N, K = weight.shape
    want = (-(-(row_offset + N) // bn), -(-K // bk))
    if tuple(scale_inv.shape) != want:
        raise ValueError(f"fp8 weight {tuple(weight.shape)} (from row {row_offset}) with blocks {block_size} needs "
                         f"scales {want}; got {tuple(scale_inv.shape)}")
    scale = scale_inv.float().repeat_interleave(bn, 0)[row_offset:row_offset + N].repeat_interleave(bk, 1)[:, :K]
    return (weight.float() * scale).to(dtype)


def hf_rows(config: DeepseekV3Config, keys: set[str], fp8_block_size: tuple[int, int] = (128, 128)):
    """The sharded-load view of a DeepSeek-V3 / Kimi K2 checkpoint (``ModelSpec.hf_rows``,
    :mod:`xt.models.hf_rows`): ``(rename, load_rows)``. An FP8 weight's rows ``[start, stop)`` are
    read with only the block rows of scales that cover them and dequantised block by block
    (:func:`dequantize_fp8_blocks` with ``row_offset``), equal to the full tensor's rows."""
    bn = fp8_block_size[0]

    def load_rows(key: str, get_rows: Callable[[str, int, int], torch.Tensor], start: int, stop: int) -> torch.Tensor:
        scale = key + "_scale_inv"
        if scale not in keys:
            return get_rows(key, start, stop)
        first, last = start // bn, -(-stop // bn)
        return dequantize_fp8_blocks(get_rows(key, start, stop), get_rows(scale, first, max(first, last)),
                                     fp8_block_size, row_offset=start - first * bn)
    return (lambda key: _rename(key, config)), load_rows


def _rename(key: str, config: DeepseekV3Config) -> str | None:
    """Hub key -> XT key; None for FP8 scales (read with their weight) and the hub's per-depth
    copies of the shared embedding / head, and for MTP depths beyond ``config.mtp_layers``."""
    if key.endswith(".weight_scale_inv"):
        return None
    lm = _LAYER.match(key)
    if lm is None or int(lm.group(1)) < config.num_hidden_layers:
        return key
    depth, rest = int(lm.group(1)) - config.num_hidden_layers, lm.group(2)
    if depth >= config.mtp_layers or rest in ("embed_tokens.weight", "shared_head.head.weight"):
        return None
    return f"mtp.{depth}.{rest}"


def from_hf(keys: list[str], get: Callable[[str], torch.Tensor], config: DeepseekV3Config,
            source: str = "checkpoint", fp8_block_size: tuple[int, int] = (128, 128)) -> dict[str, torch.Tensor]:
    """HF DeepSeek-V3 checkpoint keys -> XT state dict, one tensor (and its FP8 scales) at a time.

    FP8 block-quantised weights are dequantised to bf16 as they are read (`dequantize_fp8_blocks`).
    MTP layers (``model.layers.{L+k}``) are kept only for ``k < config.mtp_layers`` (an XT option;
    a folder's config sets it from ``num_nextn_predict_layers`` when the MTP weights are there:
    :mod:`xt.models.deepseek_v3.mtp_depth`). Per-expert weights are stacked by `stack_experts` (all ``n_routed_experts``
    required).

    Raises:
        ValueError: an MoE layer with a missing expert or projection (names the key).
    """
    key_set = set(keys)

    def load(key: str, read: Callable[[str], torch.Tensor]) -> torch.Tensor:
        scale = key + "_scale_inv"
        return dequantize_fp8_blocks(read(key), read(scale), fp8_block_size) if scale in key_set else read(key)

    xt_keys, read = renamed_view(keys, get, lambda k: _rename(k, config), load)
    out = stack_experts(xt_keys, read, source, num_experts=config.n_routed_experts)
    return tie_head(out, config.tie_word_embeddings, source)


def hf_to_xt(sd: dict[str, torch.Tensor], config: DeepseekV3Config,
             fp8_block_size: tuple[int, int] = (128, 128)) -> dict[str, torch.Tensor]:
    """`from_hf` over an in-memory HF state dict."""
    return from_hf(list(sd), sd.__getitem__, config, fp8_block_size=fp8_block_size)


def xt_to_hf(sd: dict[str, torch.Tensor], config: DeepseekV3Config) -> dict[str, torch.Tensor]:
    """XT state dict -> HF hub layout (per-expert keys; MTP as ``model.layers.{L+k}``, each depth with
    its copies of the embedding and head). Key by key, so any part of a state dict maps on its own
    (the streamed export): the copies come with ``model.embed_tokens.weight`` / ``lm_head.weight``."""
    L = config.num_hidden_layers
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        for name, copy in (("model.embed_tokens.weight", "embed_tokens.weight"), ("lm_head.weight", "shared_head.head.weight")):
            if k == name:
                out.update({f"model.layers.{L + depth}.{copy}": v for depth in range(config.mtp_layers)})
        mm = re.match(r"^mtp\.(\d+)\.(.*)$", k)
        if mm:
            k = f"model.layers.{L + int(mm.group(1))}.{mm.group(2)}"
        if k.endswith(".mlp.experts.gate_up_proj"):
            prefix = k[: -len(".gate_up_proj")]
            F = v.shape[1] // 2
            for e in range(v.shape[0]):
                out[f"{prefix}.{e}.gate_proj.weight"] = v[e, :F].contiguous()
                out[f"{prefix}.{e}.up_proj.weight"] = v[e, F:].contiguous()
        elif k.endswith(".mlp.experts.down_proj"):
            prefix = k[: -len(".down_proj")]
            for e in range(v.shape[0]):
                out[f"{prefix}.{e}.down_proj.weight"] = v[e].contiguous()
        else:
            out[k] = v
    if config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out
