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

import torch

from xt.models.deepseek_v3.config import DeepseekV3Config

__all__ = ["hf_to_xt", "xt_to_hf", "dequantize_fp8_blocks"]

_PER_EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.*)$")


def dequantize_fp8_blocks(weight: torch.Tensor, scale_inv: torch.Tensor, block_size: tuple[int, int] = (128, 128),
                          dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Block-wise FP8 weight ``[N, K]`` (float8_e4m3fn) times its scales ``[ceil(N/bn), ceil(K/bk)]``.

    Element ``(i, j)`` becomes ``float(weight[i, j]) * scale_inv[i // bn, j // bk]`` (in float32, then
    ``dtype``). Reference: DeepSeek-V3 report §3.3 (fine-grained FP8 quantisation, 128x128 weight blocks).

    Raises:
        ValueError: scales whose shape does not cover the weight with ``block_size`` blocks.
    """
    bn, bk = block_size
    N, K = weight.shape
    want = (-(-N // bn), -(-K // bk))
    if tuple(scale_inv.shape) != want:
        raise ValueError(f"fp8 weight {tuple(weight.shape)} with blocks {block_size} needs scales {want}; "
                         f"got {tuple(scale_inv.shape)}")
    scale = scale_inv.float().repeat_interleave(bn, 0)[:N].repeat_interleave(bk, 1)[:, :K]
    return (weight.float() * scale).to(dtype)


def _dequantize_all(sd: dict[str, torch.Tensor], block_size: tuple[int, int]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if k.endswith(".weight_scale_inv"):
            continue
        sk = k + "_scale_inv"
        out[k] = dequantize_fp8_blocks(v, sd[sk], block_size) if sk in sd else v
    return out


def hf_to_xt(sd: dict[str, torch.Tensor], config: DeepseekV3Config,
             fp8_block_size: tuple[int, int] = (128, 128)) -> dict[str, torch.Tensor]:
    """HF DeepSeek-V3 state dict -> XT state dict (FP8 block-quantised weights dequantised to bf16).

    MTP layers (``model.layers.{L+k}``) are kept only for ``k < config.mtp_layers`` (``mtp_layers`` is an
    XT option, 0 unless set: hub configs announce ``num_nextn_predict_layers`` with or without weights).

    Raises:
        ValueError: an MoE layer with missing experts (names the layer and expert).
    """
    L, E = config.num_hidden_layers, config.n_routed_experts
    if any(k.endswith(".weight_scale_inv") for k in sd):
        sd = _dequantize_all(sd, fp8_block_size)
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for k, v in sd.items():
        lm = _LAYER.match(k)
        m = _PER_EXPERT.match(k)
        if m and int(lm.group(1)) < L:
            experts.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = v
            continue
        if lm and int(lm.group(1)) >= L:
            depth = int(lm.group(1)) - L
            rest = lm.group(2)
            if depth >= config.mtp_layers or rest in ("embed_tokens.weight", "shared_head.head.weight"):
                continue
            k = f"mtp.{depth}.{rest}"
            m2 = re.match(r"^(mtp\.\d+\.mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight$", k)
            if m2:
                experts.setdefault(m2.group(1), {}).setdefault(int(m2.group(2)), {})[m2.group(3)] = v
                continue
        out[k] = v
    for prefix, per in experts.items():
        for e in range(E):
            if e not in per or len(per[e]) != 3:
                raise ValueError(f"checkpoint: {prefix}.{e} is missing gate/up/down_proj weights")
        out[f"{prefix}.gate_up_proj"] = torch.stack([torch.cat([per[e]["gate"], per[e]["up"]], 0) for e in range(E)])
        out[f"{prefix}.down_proj"] = torch.stack([per[e]["down"] for e in range(E)])
    if config.tie_word_embeddings:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def xt_to_hf(sd: dict[str, torch.Tensor], config: DeepseekV3Config) -> dict[str, torch.Tensor]:
    """XT state dict -> HF hub layout (per-expert keys; MTP as ``model.layers.{L+k}``)."""
    L = config.num_hidden_layers
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        mm = re.match(r"^mtp\.(\d+)\.(.*)$", k)
        if mm:
            depth = int(mm.group(1))
            k = f"model.layers.{L + depth}.{mm.group(2)}"
            out[f"model.layers.{L + depth}.embed_tokens.weight"] = sd["model.embed_tokens.weight"]
            out[f"model.layers.{L + depth}.shared_head.head.weight"] = sd["lm_head.weight"]
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
