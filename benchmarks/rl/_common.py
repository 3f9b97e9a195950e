"""Shared helpers of the RL benchmarks: the machine record and the atomic JSON result file."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def machine(device: torch.device) -> dict:
    """Platform, CPU count, torch threads and version, the GPU's name (None on CPU)."""
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None}


def write_result(out: str | None, name: str, result: dict) -> Path:
    """Write ``result`` as JSON to ``out`` or ``benchmarks/results/<name>-<UTC date>.json`` (through a
    temporary file and a rename, so a reader never sees half a file); print and return the path."""
    date = time.strftime("%Y-%m-%d", time.gmtime())
    path = Path(out) if out else ROOT / "benchmarks" / "results" / f"{name}-{date}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)
    print(f"wrote {path}")
    return path
