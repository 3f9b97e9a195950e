"""HF folders in the hub's quantised formats, made from a plain ``save_pretrained`` folder: DeepSeek-V3
FP8 (float8_e4m3 weights with 128x128 float32 block scales ``weight_scale_inv``) and GPT-OSS MXFP4
(expert ``_blocks`` / ``_scales``, random e2m1 nibbles and e8m0 scales)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from xt.models.common.safetensors_io import CheckpointReader, write_safetensors


def _copy_config(src: Path, dst: Path, **extra) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, **extra}))
    shutil.copy(src / "generation_config.json", dst / "generation_config.json")


def fp8_folder(src: Path, dst: Path, block: int = 128, max_shard_size: int = 200_000) -> None:
    """Every 2-D ``*proj.weight`` of `src` quantised to float8_e4m3fn with per-block scales (amax / 448)."""
    reader = CheckpointReader(src)
    out = {}
    for k in reader.keys():
        v = reader.get(k)
        if k.endswith("proj.weight") and v.dim() == 2:
            n, m = v.shape
            pad = torch.zeros(-(-n // block) * block, -(-m // block) * block)
            pad[:n, :m] = v.abs()
            s = pad.unflatten(0, (-1, block)).unflatten(2, (-1, block)).amax(dim=(1, 3)) / 448 + 1e-12
            full = s.repeat_interleave(block, 0)[:n].repeat_interleave(block, 1)[:, :m]
            out[k] = (v / full).clamp(-448, 448).to(torch.float8_e4m3fn)
            out[k + "_scale_inv"] = s
        else:
            out[k] = v
    write_safetensors(out, dst, max_shard_size)
    _copy_config(src, dst, quantization_config={"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                                "weight_block_size": [block, block]})


def mxfp4_folder(src: Path, dst: Path, seed: int = 1, max_shard_size: int = 200_000) -> None:
    """`src`'s fused expert weights replaced by random MXFP4 blocks and scales (GPT-OSS hub layout)."""
    reader = CheckpointReader(src)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k in reader.keys():
        if k.endswith(("experts.gate_up_proj", "experts.down_proj")):
            E, cols, rows = reader.shape(k)  # HF [E, in, out]
            out[k + "_blocks"] = torch.randint(0, 256, (E, rows, cols // 32, 16), generator=g).to(torch.uint8)
            out[k + "_scales"] = torch.randint(121, 126, (E, rows, cols // 32), generator=g).to(torch.uint8)
        else:
            out[k] = reader.get(k)
    write_safetensors(out, dst, max_shard_size)
    _copy_config(src, dst, quantization_config={"quant_method": "mxfp4"})
