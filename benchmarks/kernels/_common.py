"""Shared helpers of the kernel benchmarks: environment record, CUDA-event timing, JSON output.

Timing: ``triton.testing.do_bench`` (CUDA events, L2 flushed between repeats) after warm-up, the
median of the repeats, in milliseconds. Inputs are random (never all zeros).
"""
from __future__ import annotations

import datetime
import json
import os
import platform

import torch


def env_info() -> dict:
    """GPU name, SM count, torch/triton/CUDA versions, host, UTC time."""
    import triton
    props = torch.cuda.get_device_properties(0)
    return {"gpu": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def bench_ms(fn, warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median milliseconds of ``fn()`` over repeats (CUDA events, after warm-up)."""
    import triton.testing
    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def write_json(out_dir: str, name: str, payload: dict) -> str:
    """Write ``payload`` as ``{out_dir}/kernels-{name}-{date}.json`` and return the path."""
    os.makedirs(out_dir, exist_ok=True)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    path = os.path.join(out_dir, f"kernels-{name}-{date}.json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
    return path


def table(rows: list[dict], cols: list[str]) -> str:
    """A plain fixed-width text table of ``rows`` over ``cols``."""
    def fmt(v):
        return f"{v:.1f}" if isinstance(v, float) else str(v)
    widths = [max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in cols]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(fmt(r.get(c, "")).rjust(w) for c, w in zip(cols, widths)) for r in rows]
    return "\n".join(lines)
