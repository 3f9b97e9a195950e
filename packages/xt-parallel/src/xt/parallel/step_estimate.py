"""Estimated step time of a layout on H200s, from a committed table of rates (``xt plan``).

The table is ``rates_h200.json`` beside this module (:func:`load_rates`): each rate has a value, a
unit, a status (``measured``, ``datasheet`` or ``placeholder``) and its source (the result file, or
how a placeholder was guessed). ``benchmarks/plan/measure_rates.py`` measures the one-GPU rates on
an H200 and ``--install`` writes them into it; NVLink and network bandwidths need several GPUs and
stay placeholders until measured there (``nvlink_gbps``: the ``comm`` stage of
``benchmarks/multi_gpu/run.py``, nccl-tests' bus bandwidth, which is what the formulas below divide by).

Compute: the model's training FLOPs (``flops_per_token``, docs/architecture.md, MFU) at the
whole-step efficiency XT measured on one H200 (fp32 masters, bf16 autocast, AdamW included):

* MFU 0.200 at 4,096-token micro-batches and 0.269 at 16,384 (medians after warm-up,
  ``benchmarks/results/bench-train-weight-cast-2026-12-01.json``, 5.6B Qwen3-MoE), interpolated in
  log(tokens) between them and held outside;
* for reference (not used by the estimate), the kernels alone: fused grouped-GEMM SwiGLU experts
  512 TFLOP/s and a dense bf16 matmul of the same FLOPs 517 TFLOP/s, forward + backward
  (``benchmarks/results/kernels-moe-fused-qwen3-30b-2026-11-29.json``), and the plain bf16 GEMM,
  ``torch._grouped_mm`` and HBM rates of ``measure_rates.py``.

Communication: expert all-to-all is on the critical path (dispatch and combine, forward and
backward); FSDP2's all-gathers and reduce-scatters overlap compute, so only what exceeds the
compute time is added; both use ``nvlink_gbps`` within a node and ``network_gbps`` beyond
(placeholders). ``cpu_offload``: the rank's fp32 parameter shard crosses host -> device for every
all-gather (forward and backward of each micro-batch) and its gradient shard device -> host once
per step (``h2d_gbps``, ``d2h_gbps``), not overlapped; the CPU's AdamW step is not counted.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RATES", "RATE_STATUS", "RATES_FILE", "StepEstimate", "load_rates", "measured_mfu", "estimate_step"]

RATES_FILE = Path(__file__).with_name("rates_h200.json")


def load_rates(path: str | Path = RATES_FILE) -> tuple[dict[str, tuple[float, str]], dict[str, str]]:
    """Read a rate table (module docstring): ``({name: (value, source)}, {name: status})``.

    Raises:
        ValueError: a rate without a numeric ``value`` or a ``source`` (named, with the file).
    """
    table = json.loads(Path(path).read_text())["rates"]
    rates, status = {}, {}
    for name, r in table.items():
        if not isinstance(r.get("value"), (int, float)) or not r.get("source"):
            raise ValueError(f"{path}: rate {name!r} needs a numeric 'value' and a 'source'; got {r!r}")
        rates[name], status[name] = (float(r["value"]), str(r["source"])), str(r.get("status", "placeholder"))
    return rates, status


#: the rate table; every entry names its source. ``RATE_STATUS`` says which are placeholders.
RATES, RATE_STATUS = load_rates()
GPUS_PER_NODE = 8


@dataclass(frozen=True)
class StepEstimate:
    """Seconds of one optimizer step per GPU: ``compute``, ``all_to_all`` and ``fsdp`` (the latter
    overlapped), ``total``; and ``tokens_per_s_per_gpu`` and ``mfu`` that follow; ``offload`` the
    host-device copies of ``cpu_offload`` (in ``total``)."""

    compute: float
    all_to_all: float
    fsdp: float
    total: float
    tokens_per_s_per_gpu: float
    mfu: float
    offload: float = 0.0


def measured_mfu(tokens: int) -> float:
    """Whole-step MFU measured on one H200 at `tokens` per micro-batch (module docstring)."""
    lo, hi = RATES["mfu_4k"][0], RATES["mfu_16k"][0]
    x = (math.log2(max(tokens, 1)) - 12) / 2  # 4,096 -> 0, 16,384 -> 1
    return lo + (hi - lo) * min(max(x, 0.0), 1.0)


def _bandwidth(group: int) -> float:
    key = "nvlink_gbps" if group <= GPUS_PER_NODE else "network_gbps"
    return RATES[key][0] * 1e9


def estimate_step(*, flops_per_token: float, tokens: int, moe_layers: int, top_k: int, hidden: int,
                  ep_size: int, fsdp_size: int, dense_params: int, expert_params: int,
                  recompute_share: float = 0.0, gathered_bytes: int = 4, micro_batches: int = 1,
                  cpu_offload: bool = False) -> StepEstimate:
    """Estimate one optimizer step of `micro_batches` micro-batches of `tokens` tokens per GPU.

    Args:
        flops_per_token: training FLOPs per token (forward + backward) at the run's sequence length.
        tokens: tokens per micro-batch on this GPU.
        moe_layers, top_k, hidden: MoE layers, experts per token, hidden size (all-to-all volume:
            ``tokens * top_k * hidden`` bf16 values sent and received, twice in forward (dispatch,
            combine) and twice in backward, per MoE layer).
        ep_size, fsdp_size: EP group and FSDP group sizes (> 8 GPUs: network bandwidth, else NVLink).
        dense_params, expert_params: the full model's non-expert and expert parameter counts;
            FSDP2 gathers ``dense + expert / ep`` twice per micro-batch (forward, backward) and
            reduce-scatters the fp32 gradients once per step (gradient sync is off before the
            last micro-batch).
        recompute_share: share of the layers recomputed (activation checkpointing): + 1/3 of their
            FLOPs.
        gathered_bytes: 4 (fp32 parameters gathered) or 2 (``param_dtype = "bf16"``).
        micro_batches: micro-batches per optimizer step (``train.micro_batches_per_step``).
        cpu_offload: FSDP2 CPU offload: the fp32 parameter shard ``(dense + expert / ep) / fsdp``
            is copied host -> device twice per micro-batch and its gradient device -> host once.

    Returns:
        A :class:`StepEstimate`.
    """
    mfu = measured_mfu(tokens)
    flops = flops_per_token * tokens * micro_batches * (1 + recompute_share / 3)
    compute = flops / (RATES["peak_tflops"][0] * 1e12 * mfu)
    a2a = 0.0
    if ep_size > 1:
        volume = 4 * moe_layers * tokens * micro_batches * top_k * hidden * 2 * (ep_size - 1) / ep_size
        a2a = volume / _bandwidth(ep_size)
    fsdp = 0.0
    if fsdp_size > 1:
        shard_bytes = (dense_params + expert_params / ep_size) * (2 * gathered_bytes * micro_batches + 4)
        fsdp = shard_bytes * (fsdp_size - 1) / fsdp_size / _bandwidth(fsdp_size)
    offload = 0.0
    if cpu_offload:
        shard = 4 * (dense_params + expert_params / ep_size) / max(fsdp_size, 1)
        offload = 2 * micro_batches * shard / (RATES["h2d_gbps"][0] * 1e9) + shard / (RATES["d2h_gbps"][0] * 1e9)
    total = compute + a2a + max(0.0, fsdp - compute) + offload
    tps = tokens * micro_batches / total
    return StepEstimate(compute, a2a, fsdp, total, tps, flops_per_token * tps / (RATES["peak_tflops"][0] * 1e12),
                        offload)
