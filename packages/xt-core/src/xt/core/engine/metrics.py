"""Per-step metrics: throughput, MFU, memory, and the metrics.jsonl writer.

Metric names follow docs/architecture.md, Metrics: ``loss``, ``aux_loss``, ``grad_norm``, ``lr``,
``tokens_per_s``, ``mfu``, ``max_memory_gib``.
"""
from __future__ import annotations

import json
import math
import resource
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["step_metrics", "effective_seq_len", "mfu", "max_memory_gib", "default_peak_tflops", "to_jsonable",
           "MetricsWriter", "read_metrics"]

H100_H200_BF16_DENSE_TFLOPS = 989.0


def effective_seq_len(micro_batches: Sequence[Mapping[str, Any]]) -> float:
    """Token-weighted mean document length of the micro-batches, the `seq_len` for attention FLOPs.

    Causal attention work per token grows with its document's length, so for packed batches
    with documents of lengths L_d the right per-token sequence is sum(L_d^2) / sum(L_d). Packed
    batches use ``cu_seqlens`` ([D+1] int32); plain ``input_ids [B, S]`` count S per row; a packed
    ``input_ids [T]`` without ``cu_seqlens`` counts as one document of length T.

    Returns:
        The length in tokens (a float; 0.0 for empty batches).
    """
    sq = tot = 0.0
    for mb in micro_batches:
        cu = mb.get("cu_seqlens")
        if cu is not None:
            lens = (cu[1:] - cu[:-1]).double().cpu()
            sq += float((lens * lens).sum())
            tot += float(lens.sum())
        else:
            ids = mb["input_ids"]
            s = ids.shape[-1]
            rows = ids.numel() // s if s else 0
            sq += rows * s * s
            tot += rows * s
    return sq / tot if tot else 0.0


def mfu(flops_per_token: float, tokens_per_s: float, peak_tflops: float | None,
        world_size: int = 1) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of all devices.

    Args:
        flops_per_token: training FLOPs per token (forward + backward; docs/architecture.md, MFU:
            6 x active parameters + 6 x layers x heads x head_dim x sequence).
        tokens_per_s: tokens per second over all ranks.
        peak_tflops: peak dense TFLOP/s of one device, or None (unknown: returns None).
        world_size: number of devices sharing `tokens_per_s`.

    Returns:
        A fraction in [0, 1] normally (not clipped), or None without a peak.
    """
    if peak_tflops is None:
        return None
    return flops_per_token * tokens_per_s / (peak_tflops * 1e12 * world_size)


def default_peak_tflops(device: torch.device) -> float | None:
    """989 TFLOP/s (H100/H200 bf16 dense, NVIDIA data sheet) on CUDA; None on other devices."""
    return H100_H200_BF16_DENSE_TFLOPS if device.type == "cuda" else None


def max_memory_gib(device: torch.device) -> float:
    """Peak memory in GiB: CUDA max allocated on `device`, else the process's peak RSS.

    Peak RSS comes from `getrusage` (ru_maxrss: KiB on Linux, bytes on macOS).
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


def to_jsonable(value: Any) -> Any:
    """Tensors → python floats/ints or nested lists; non-finite floats → None (JSON has no NaN)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    return value


class MetricsWriter:
    """Appends one JSON object per step to ``metrics.jsonl`` (flushed after every line).

    Args:
        path: the JSONL file (parent folders are created).
        keep_up_to_step: when resuming, drop existing lines whose ``step`` is greater (steps
            after the checkpoint are recomputed); None keeps everything.
    """

    def __init__(self, path: str | Path, keep_up_to_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if keep_up_to_step is not None and self.path.exists():
            rows = read_metrics(self.path, strict=False)
            kept = [r for r in rows if r.get("step", 0) <= keep_up_to_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        elif keep_up_to_step is None:
            self.path.write_text("")
        self._f = self.path.open("a", encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        """Append `record` (values made JSON-safe by `to_jsonable`)."""
        self._f.write(json.dumps(to_jsonable(dict(record))) + "\n")
        self._f.flush()

    def close(self) -> None:
        """Close the file."""
        self._f.close()


def read_metrics(path: str | Path, strict: bool = True) -> list[dict[str, Any]]:
    """Read a metrics.jsonl file into a list of dicts (blank lines skipped).

    Args:
        path: the file.
        strict: raise on a line that is not JSON; False skips it (e.g. a line cut by a kill).

    Raises:
        ValueError: naming the file and line of a line that is not JSON (when `strict`).
    """
    records = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if not strict:
                continue
            raise ValueError(f"{path}:{i}: not a JSON line: {e}") from None
    return records


def step_time_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, float] | None:
    """Warm-up and stalls of a run from its metrics rows (``step_time_s`` per step).

    Returns:
        None for fewer than 3 timed steps, else seconds: ``median_s`` (median over the steps after
        the first), ``warmup_s`` (first step minus that median: compilation, autotuning, caches),
        ``max_after_first_s`` (the slowest later step) and ``max_over_median`` (its ratio to the
        median; well above 1 means a stall after warm-up).
    """
    times = [float(r["step_time_s"]) for r in rows if r.get("step_time_s") is not None]
    if len(times) < 3:
        return None
    later = sorted(times[1:])
    median = later[len(later) // 2]
    worst = later[-1]
    return {"median_s": median, "warmup_s": max(0.0, times[0] - median), "max_after_first_s": worst,
            "max_over_median": worst / median if median > 0 else float("inf")}


_CORE_KEYS = {"step", "loss", "aux_loss", "grad_norm", "lr", "tokens_per_s", "mfu",
              "max_memory_gib", "num_tokens", "loss_tokens", "seq_len", "step_time_s",
              "skipped_steps"}


def step_metrics(model: Any, stats: Any, *, grad_norm: float, lr: float, dt: float, step: int,
                 skipped_steps: int, device: torch.device, peak_tflops: float | None,
                 world_size: int) -> dict[str, Any]:
    """The metrics record of one optimizer step (docs/architecture.md, Metrics), python numbers.

    Args:
        model: for ``flops_per_token(seq_len)`` (MFU; None without it).
        stats: the step's `xt.core.engine.step.StepStats` (loss, aux_loss, token counts, seq_len,
            the model's own ``metrics``, added under their names or ``model.NAME`` on a clash).
        grad_norm, lr: from the optimizer step. dt: seconds of the step.
        step, skipped_steps: the engine's counters after the step.
        device: for ``max_memory_gib``. peak_tflops: per device, or None. world_size: ranks.
    """
    tokens_per_s = stats.num_tokens / dt if dt > 0 else None
    fpt = getattr(model, "flops_per_token", None)
    util = None
    if callable(fpt) and tokens_per_s is not None:
        util = mfu(float(fpt(max(1, round(stats.seq_len)))), tokens_per_s, peak_tflops, world_size)
    m: dict[str, Any] = {
        "step": step, "loss": float(stats.loss),
        "aux_loss": None if stats.aux_loss is None else float(stats.aux_loss),
        "grad_norm": grad_norm, "lr": lr, "tokens_per_s": tokens_per_s, "mfu": util,
        "max_memory_gib": max_memory_gib(device), "num_tokens": stats.num_tokens,
        "loss_tokens": stats.loss_tokens, "seq_len": stats.seq_len, "step_time_s": dt,
        "skipped_steps": skipped_steps,
    }
    for k, v in stats.metrics.items():
        m[f"model.{k}" if k in _CORE_KEYS else k] = v.cpu().tolist() if v.ndim else float(v)
    return m
