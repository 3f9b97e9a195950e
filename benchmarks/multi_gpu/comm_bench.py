"""The ``comm`` stage of benchmarks/multi_gpu/run.py: bus bandwidth of the collectives FSDP2 and EP
run, over all N ranks of one node, and the ``nvlink_gbps`` rate of ``xt plan`` taken from it.

Measured: ``all_gather_into_tensor`` (torch 2.13 names it ``all_gather_single``),
``reduce_scatter_tensor`` (``reduce_scatter_single``, sum) and ``all_to_all_single`` (equal
splits), bf16 on CUDA (NCCL), fp32 on the CPU (gloo; a check of the script, tiny sizes). A message
size is nccl-tests' "size": the bytes of each rank's larger buffer (the all-gather's output, the
reduce-scatter's input, the all-to-all's send buffer). Each op: warm-up calls, then repeats of
``INNER`` back-to-back calls between CUDA events (``perf_counter`` on the CPU), after a barrier;
a repeat's time is the slowest rank's (all-reduce MAX); the median over repeats is reported. The
outputs are checked (rank r sends the value r + 1).

Bandwidths (GB/s = 1e9 bytes/s), nccl-tests' definitions (its PERFORMANCE.md):
``algbw = size / time`` and ``busbw = algbw * (N - 1) / N`` for all-gather, reduce-scatter and
all-to-all alike (the ``2 (N - 1) / N`` factor is all-reduce's, which is a reduce-scatter plus an
all-gather). ``busbw`` is the bytes that cross each rank's link per second, comparable between N.

``nvlink_gbps`` for the planner: ``xt.parallel.step_estimate`` charges the all-to-all (on the
critical path) ``per-rank bytes * (N - 1) / N / nvlink_gbps`` and FSDP2's gathers and
reduce-scatters ``full bytes * (N - 1) / N / nvlink_gbps``: both are bus bandwidths in this sense.
One number serves all three, so it is the smallest of the three bus bandwidths (no term
optimistic) at ``RATE_BYTES`` = 256 MiB, the size of the planner's messages (Qwen3-30B-A3B: the
all-to-all of one MoE layer is 128-512 MiB per rank at 4k-16k tokens, one layer's FSDP2 gather
~380 MB with EP 8), or the largest measured size below it.
"""
from __future__ import annotations

import datetime as dt
import platform
import statistics
import time

import torch

OPS = ("all_gather", "reduce_scatter", "all_to_all")
CUDA_SIZES = (16 << 20, 64 << 20, 256 << 20, 1 << 30)
CPU_SIZES = (64 << 10, 256 << 10)
RATE_BYTES = 256 << 20
INNER = {"cuda": 5, "cpu": 2}
REPEATS = {"cuda": 10, "cpu": 5}
WARMUP = {"cuda": 3, "cpu": 1}
FORMAT = "xt plan rate table v1 (measured part)"


def bus_factor(op: str, world: int) -> float:
    """nccl-tests' bus-bandwidth factor of `op` on `world` ranks: ``(N - 1) / N`` (module docstring).

    Raises:
        ValueError: an unknown op, or fewer than 2 ranks (nothing crosses a link).
    """
    if op not in OPS:
        raise ValueError(f"op {op!r}: choose from {OPS}")
    if world < 2:
        raise ValueError(f"world {world}: bus bandwidth needs at least 2 ranks")
    return (world - 1) / world


def bandwidths(op: str, nbytes: int, seconds: float, world: int) -> tuple[float, float]:
    """``(algbw, busbw)`` in GB/s (1e9 bytes/s) of one `op` of `nbytes` (nccl-tests' size) in `seconds`."""
    alg = nbytes / seconds / 1e9
    return alg, alg * bus_factor(op, world)


def _case(op: str, nbytes: int, world: int, rank: int, dtype: torch.dtype, device: torch.device):
    """``(call, check, size)``: one collective on fresh buffers (rank r's input holds r + 1), a
    function raising AssertionError when its output is not what the collective must give, and the
    size in bytes (rounded down to a multiple of `world` elements)."""
    import torch.distributed as dist
    n = nbytes // torch.empty((), dtype=dtype).element_size() // world * world  # elements, divisible by world
    big = torch.full((n,), float(rank + 1), dtype=dtype, device=device)
    chunk = torch.arange(1, world + 1, dtype=dtype, device=device).repeat_interleave(n // world)
    if op == "all_gather":
        inp, out = big[: n // world].clone(), torch.empty(n, dtype=dtype, device=device)
        fn, want = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor, chunk
    elif op == "reduce_scatter":
        inp, out = big, torch.empty(n // world, dtype=dtype, device=device)
        fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
        want = torch.full_like(out, world * (world + 1) / 2)
    else:
        inp, out, fn, want = big, torch.empty(n, dtype=dtype, device=device), dist.all_to_all_single, chunk

    def check() -> None:
        if not torch.equal(out, want):
            raise AssertionError(f"{op}: rank {rank}'s output is not what {world} ranks sent")
    return (lambda: fn(out, inp)), check, n * big.element_size()  # the larger buffer holds n elements


def run_rank(spec: dict, state: dict) -> list[dict]:
    """Pool job (tests/parallel/parallel_harness.py) of one message size on every rank.

    Args:
        spec: ``bytes`` (nccl-tests' size), ``device`` ("cuda" / "cpu"), ``dtype`` (torch dtype name).
        state: the worker's state (unused).

    Returns:
        ``[{op, bytes, seconds, algbw_gbps, busbw_gbps, bus_factor, repeats}]`` (the same on every rank).
    """
    import torch.distributed as dist
    world, rank = dist.get_world_size(), dist.get_rank()
    kind = spec["device"]
    device = torch.device("cuda", torch.cuda.current_device()) if kind == "cuda" else torch.device("cpu")
    dtype = getattr(torch, spec["dtype"])
    rows = []
    for op in OPS:
        call, check, nbytes = _case(op, spec["bytes"], world, rank, dtype, device)
        for _ in range(WARMUP[kind]):
            call()
        times = []
        for _ in range(REPEATS[kind]):
            dist.barrier()
            if kind == "cuda":
                torch.cuda.synchronize(device)
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                for _ in range(INNER[kind]):
                    call()
                b.record()
                torch.cuda.synchronize(device)
                times.append(a.elapsed_time(b) / 1e3 / INNER[kind])
            else:
                t0 = time.perf_counter()
                for _ in range(INNER[kind]):
                    call()
                times.append((time.perf_counter() - t0) / INNER[kind])
        check()
        slowest = torch.tensor(times, dtype=torch.float64, device=device)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        s = statistics.median(slowest.tolist())
        alg, bus = bandwidths(op, nbytes, s, world)
        rows.append({"op": op, "bytes": nbytes, "seconds": s, "algbw_gbps": alg, "busbw_gbps": bus,
                     "bus_factor": bus_factor(op, world), "repeats": len(times)})
    return rows


def planner_rate(rows: list[dict]) -> dict:
    """``nvlink_gbps`` from measured `rows` (module docstring): the smallest bus bandwidth of the
    three ops at the largest measured size <= ``RATE_BYTES`` (or the smallest size, if all are larger).

    Raises:
        ValueError: no rows, or a size without all three ops.
    """
    sizes = sorted({r["bytes"] for r in rows})
    if not sizes:
        raise ValueError("no measured rows")
    size = max([s for s in sizes if s <= RATE_BYTES], default=sizes[0])
    at = [r for r in rows if r["bytes"] == size]
    if sorted(r["op"] for r in at) != sorted(OPS):
        raise ValueError(f"size {size}: need all of {OPS}, got {[r['op'] for r in at]}")
    low = min(at, key=lambda r: r["busbw_gbps"])
    return {"bytes": size, "op": low["op"], "busbw_gbps": low["busbw_gbps"]}


def rates_block(rows: list[dict], world: int, device: str, dtype: str, backend: str, file_name: str) -> dict:
    """``{"format", "env", "rates": {"nvlink_gbps": {value, unit, status, source}}}``, the format of
    benchmarks/plan/measure_rates.py's files (what its ``--install`` reads)."""
    pick = planner_rate(rows)
    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu"
    env = {"device": device, "name": name, "world": world, "backend": backend, "dtype": dtype,
           "torch": torch.__version__, "python": platform.python_version(),
           "utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    source = (f"benchmarks/results/{file_name}, benchmarks/multi_gpu/run.py comm: smallest bus bandwidth of "
              f"all-gather / reduce-scatter / all-to-all ({pick['op']}) at {pick['bytes'] / 2**20:g} MiB, "
              f"{dtype}, {world} ranks ({backend})")
    rate = {"value": float(f"{pick['busbw_gbps']:.4g}"), "unit": "GB/s", "status": "measured", "source": source}
    return {"format": FORMAT, "env": env, "rates": {"nvlink_gbps": rate}}


def comm_table(rows: list[dict]) -> str:
    """One line per (op, size): size MiB, median us, algbw and busbw GB/s."""
    lines = [f"{'op':>15} {'size MiB':>9} {'time us':>10} {'algbw GB/s':>11} {'busbw GB/s':>11}"]
    for r in rows:
        lines.append(f"{r['op']:>15} {r['bytes'] / 2**20:>9.4g} {r['seconds'] * 1e6:>10.1f} "
                     f"{r['algbw_gbps']:>11.2f} {r['busbw_gbps']:>11.2f}")
    return "\n".join(lines)
