"""Measure `xt plan`'s one-GPU rates on an H200 and write them in the planner's table format.

Measured (each the median of timed repeats after warm-up, random bf16 data, CUDA events):

* ``bf16_gemm_tflops``: ``torch.matmul`` of two 8192 x 8192 bf16 matrices (2 M N K FLOPs);
* ``grouped_mm_tflops``: XT's ``torch`` grouped GEMM (``xt.kernels.moe.gg_torch.mgrouped``,
  ``torch._grouped_mm``) forward at Qwen3-30B-A3B's expert shapes (128 experts, hidden 2048, gate-up
  width 1536), 131,072 routed rows (16,384 tokens x top-8) spread evenly;
* ``hbm_gbps``: a device-to-device ``copy_`` of 2 GiB (bytes read + written, the device notes' way);
* ``h2d_gbps`` / ``d2h_gbps``: ``copy_`` of 1 GiB between pinned host memory and the GPU.

NVLink and network bandwidths need several GPUs or nodes: this script does not measure them.
``nvlink_gbps`` is measured by the ``comm`` stage of benchmarks/multi_gpu/run.py (bus bandwidth of
all-gather / reduce-scatter / all-to-all over the GPUs of one node), whose JSON holds a ``rates``
block in this script's format; ``network_gbps`` (several nodes) stays a placeholder.

Output: ``{--out}/plan-rates-<device>-<date>.json`` in the table format (``{"rates": {name: {value,
unit, status, source}}}`` plus ``env`` and the raw timings), written atomically, and a printed
table. ``--install FILE`` (no GPU needed) then writes the known rates FILE holds (``KNOWN``: this
script's, or ``nvlink_gbps`` of a multi-GPU comm file) into the package table
``packages/xt-parallel/src/xt/parallel/rates_h200.json`` (atomically), leaving the others as they are;
a file measured on another device than CUDA, one holding none of them, an unknown rate name or a
rate that is not ``measured`` is refused.

Next GPU session (one ``nvidia-h200`` call, together with ``validate_plan.py``; msgspec is not on the
machine, so carry its wheel: ``mkdir -p .whl && cp /work/main/.whl/msgspec-*.whl .whl/`` with
``/.whl/`` in ``.git/info/exclude``, then ``carry=[".whl"]``)::

    set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \\
      && export PYTHONPATH=/tmp/site:$(ls -d $PWD/packages/*/src | tr '\\n' ':') PYTHONUNBUFFERED=1 \\
      && python3 benchmarks/plan/measure_rates.py --out $OUT 2>&1 | tee $OUT/measure_rates.log \\
      && python3 benchmarks/plan/validate_plan.py --out $OUT 2>&1 | tee $OUT/validate_plan.log

(about 30 s for this script). Back here: copy the files from ``files_at`` into benchmarks/results/,
then ``python benchmarks/plan/measure_rates.py --install benchmarks/results/plan-rates-cuda-DATE.json``
and commit the table. ``--device cpu`` runs the same code on the CPU with small sizes (a check of
the script; its file cannot be installed).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "models"))
TABLE = ROOT / "packages" / "xt-parallel" / "src" / "xt" / "parallel" / "rates_h200.json"
MEASURED = ("bf16_gemm_tflops", "grouped_mm_tflops", "hbm_gbps", "h2d_gbps", "d2h_gbps")
#: what ``--install`` accepts: this script's rates and the multi-GPU ones (benchmarks/multi_gpu/run.py comm)
KNOWN = MEASURED + ("nvlink_gbps", "network_gbps")
#: the ``format`` of a measured file (this script's, and the comm stage's ``rates`` block)
FORMAT = "xt plan rate table v1 (measured part)"


def _timer(device: torch.device):
    """``time(fn, repeats, warmup) -> median seconds`` on `device` (``benchmarks/models/gpu_step.timed``:
    CUDA events on the GPU, perf_counter on the CPU)."""
    from gpu_step import timed
    return lambda fn, repeats, warmup: statistics.median(timed(fn, device, warmup, repeats))


def measure(device: torch.device, small: bool) -> dict:
    """Every rate of ``MEASURED``: ``{name: {value, unit, shape, seconds}}``."""
    from xt.kernels.moe.gg_torch import mgrouped
    timed = _timer(device)
    reps, warm = (3, 1) if small else (20, 5)
    g = torch.Generator(device="cpu").manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # the CPU check stays in fp32
    out = {}

    n = 512 if small else 8192
    a, b = (torch.randn(n, n, generator=g).to(device, dtype) for _ in range(2))
    s = timed(lambda: torch.matmul(a, b), reps, warm)
    out["bf16_gemm_tflops"] = {"value": 2 * n**3 / s / 1e12, "unit": "TFLOP/s", "shape": f"{n}^3 {dtype}", "seconds": s}
    del a, b
    print(f"  gemm {n}^3: {out['bf16_gemm_tflops']['value']:.1f} TFLOP/s", flush=True)

    E, D, N, rows = (8, 256, 192, 4096) if small else (128, 2048, 1536, 131072)
    x = torch.randn(rows, D, generator=g).to(device, dtype)
    w = (torch.randn(E, N, D, generator=g) * D**-0.5).to(device, dtype)
    counts = torch.full((E,), rows // E, dtype=torch.int64, device=device)
    s = timed(lambda: mgrouped(x, w, counts, trans_b=True), reps, warm)
    out["grouped_mm_tflops"] = {"value": 2 * rows * D * N / s / 1e12, "unit": "TFLOP/s",
                                "shape": f"E={E} rows={rows} K={D} N={N} {dtype}", "seconds": s}
    del x, w
    print(f"  grouped mm E={E}: {out['grouped_mm_tflops']['value']:.1f} TFLOP/s", flush=True)

    nbytes = (64 << 20) if small else (2 << 30)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255, generator=None)
    dst = torch.empty_like(src)
    s = timed(lambda: dst.copy_(src), reps, warm)
    out["hbm_gbps"] = {"value": 2 * nbytes / s / 1e9, "unit": "GB/s", "shape": f"{nbytes} bytes, read + written",
                       "seconds": s}
    del src, dst
    print(f"  device copy: {out['hbm_gbps']['value']:.0f} GB/s", flush=True)

    nbytes = (64 << 20) if small else (1 << 30)
    pinned = device.type == "cuda"
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned).random_(0, 255)
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    for name, fn in (("h2d_gbps", lambda: dev.copy_(host, non_blocking=True)),
                     ("d2h_gbps", lambda: host.copy_(dev, non_blocking=True))):
        s = timed(fn, reps, warm)
        out[name] = {"value": nbytes / s / 1e9, "unit": "GB/s", "shape": f"{nbytes} bytes, pinned={pinned}", "seconds": s}
        print(f"  {name}: {out[name]['value']:.1f} GB/s", flush=True)
    return out


def _write_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def install(measured_file: Path, table_file: Path = TABLE) -> dict:
    """Write the known rates of `measured_file` into the planner's table `table_file` (module docstring).

    Args:
        measured_file: a JSON with ``env.device`` and ``rates`` ({name: {value, unit, status, source}}):
            this script's output or benchmarks/multi_gpu/run.py's comm stage's.
        table_file: the rate table (default the package's ``rates_h200.json``).

    Returns:
        The table as written.

    Raises:
        ValueError: a file measured on another device than CUDA, one without any rate of ``KNOWN``,
            an unknown rate name, a rate that is not ``measured`` or lacks a numeric value / unit /
            source, or a unit other than the table's (each named, with the file).
    """
    got = json.loads(measured_file.read_text())
    device = got.get("env", {}).get("device") if isinstance(got.get("env"), dict) else None
    if device != "cuda":
        raise ValueError(f"{measured_file}: measured on {device!r}, not on a GPU; "
                         "only a CUDA measurement goes into the planner's table")
    rates = got.get("rates")
    if not isinstance(rates, dict):
        raise ValueError(f"{measured_file}: no 'rates' block ({{name: {{value, unit, status, source}}}})")
    unknown = sorted(set(rates) - set(KNOWN))
    if unknown:
        raise ValueError(f"{measured_file}: rates {unknown} are not ones the planner's table takes {list(KNOWN)}")
    names = [k for k in KNOWN if k in rates]
    if not names:
        raise ValueError(f"{measured_file}: holds none of the planner's measured rates {list(KNOWN)}")
    table = json.loads(table_file.read_text())
    for name in names:
        r = rates[name]
        if (not isinstance(r, dict) or not isinstance(r.get("value"), (int, float)) or not r.get("unit")
                or not r.get("source") or r.get("status") != "measured"):
            raise ValueError(f"{measured_file}: rate {name!r} needs a numeric 'value', a 'unit', a 'source' and "
                             f"status 'measured'; got {r!r}")
        unit = table["rates"].get(name, {}).get("unit", r["unit"])
        if r["unit"] != unit:
            raise ValueError(f"{measured_file}: rate {name!r} is in {r['unit']!r}, the table's in {unit!r}")
    for name in names:
        old = table["rates"].get(name, {}).get("value")
        table["rates"][name] = rates[name]
        print(f"  {name}: {old} -> {rates[name]['value']:g} {rates[name]['unit']}")
    _write_atomic(table_file, table)
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the JSON")
    ap.add_argument("--install", type=Path, help="write this measured JSON into the planner's table; no measuring")
    a = ap.parse_args(argv)
    if a.install:
        try:
            install(a.install)
        except (OSError, ValueError, KeyError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"wrote {TABLE}")
        return 0
    device = torch.device(a.device)
    t0 = time.perf_counter()
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"measure_rates: {name}, torch {torch.__version__}", flush=True)
    raw = measure(device, small=device.type != "cuda")
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    path = Path(a.out) / f"plan-rates-{device.type}-{date}.json"
    rates = {k: {"value": float(f"{v['value']:.4g}"), "unit": v["unit"], "status": "measured",
                 "source": f"benchmarks/results/{path.name}, measure_rates.py: {v['shape']}"} for k, v in raw.items()}
    env = {"device": device.type, "name": name, "torch": torch.__version__, "python": platform.python_version(),
           "utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, {"format": FORMAT, "env": env, "rates": rates, "raw": raw})
    print(f"wrote {path} in {time.perf_counter() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
