"""The optimizer side of a step: clip + AdamW + bf16 compute-copy refresh, three ways (H200).

What is timed: `Engine.optim_step` itself (gradients re-attached before each call, which drops
them) over the parameters of examples/qwen3_moe_5b.toml's model (the bench_train model, 5.6B
parameters; built on the meta device, then allocated on the GPU with random values), bf16 autocast
with ``train.weight_cast = "per_step"``, ``max_grad_norm = 1.0`` (clipping active: the random
gradients' norm is far above 1):

* ``separate``: the path before the clip was folded: the norm, a pass multiplying every gradient
  by the clip factor (torch's ``clip_grad_norm_``), torch's fused AdamW, the bf16 re-cast pass
  (``ComputeWeights.refresh``);
* ``clip folded``: the default now: the norm, torch's fused AdamW dividing by ``grad_scale``
  (which writes the unscaled gradients back), the re-cast pass;
* ``fused_bf16_refresh``: the norm, then `xt.kernels.optim.AdamWRefresh`: one Triton pass that
  reads param/grad/m/v once and writes param, m, v and the bf16 copy.

Per row: median milliseconds (CUDA events, after warm-up), the bytes each path must move (counted
from the parameter set: 4 B per element read for the norm, 8 for the clip pass, 28 for torch's
fused AdamW, +4 with ``grad_scale``, 6 per copied element for the re-cast, 30 or 28 for the Triton
pass), the GB/s that gives, and the time a device copy at the measured copy bandwidth (the
ceiling: ``dst.copy_(src)`` of 4 GiB fp32) would need for those bytes. Before timing, the three
paths run 2 steps from the same start on the tiny model and are compared with ``separate``: max
relative weight difference and whether every copy equals ``master.to(bf16)``.

On the H200 (Python 3.12, no msgspec installed: carry a cp312 msgspec wheel and install it
offline first, docs/architecture.md, Machines), from the repository root:

    pip install --no-index msgspec-*-cp312-*.whl && \\
    PYTHONPATH=$(ls -d packages/*/src | tr '\\n' ':') python benchmarks/kernels/bench_optim.py --out-dir $OUT

writes ``kernels-optim-DATE.json`` (about 100 GB of GPU memory: fp32 params, grads, two AdamW
moments, bf16 copies; one path at a time). ``--tiny`` runs the tiny model of bench_train on the
CPU (the Triton path is its torch formula there, or the Triton interpreter under
``TRITON_INTERPRET=1``) and writes ``kernels-optim-tiny-cpu-DATE.json``; its times mean nothing.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
import tomllib
from contextlib import contextmanager

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "train"))
from _common import table, write_json  # noqa: E402
from bench_train import CONFIG, TINY_MODEL  # noqa: E402

PATHS = ("separate", "clip folded", "fused_bf16_refresh")
MAX_NORM = 1.0


def model_config(tiny: bool) -> dict:
    """The [model.config] of examples/qwen3_moe_5b.toml (bench_train's TINY_MODEL over it with --tiny)."""
    with open(CONFIG, "rb") as f:
        cfg = dict(tomllib.load(f)["model"]["config"])
    return cfg | (TINY_MODEL | {"vocab_size": 512} if tiny else {})


def build(cfg: dict, device: torch.device, seed: int = 0):
    """The model's parameters on `device` with random values (weights ~N(0, 0.02²)) and random
    gradients (kept aside, re-attached before each step)."""
    from xt.models import build_model
    model = build_model(cfg, device="meta").to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    grads = []
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=gen)
            grads.append(torch.randn(p.shape, device=device, generator=gen))
    return model, grads


@contextmanager
def _clip_not_folded():
    """The engine as before the clip was folded: no optimizer takes the clip factor."""
    import xt.core.engine.engine as eng
    saved = eng.takes_grad_scale
    eng.takes_grad_scale = lambda opt: False
    try:
        yield
    finally:
        eng.takes_grad_scale = saved


def engine_for(path: str, model):
    """The `Engine` of one path (bf16 autocast, per-step compute copies, clipping at 1.0)."""
    from xt.core.config import OptimConfig
    from xt.core.engine import Engine, build_optimizer
    from xt.core.engine.precision import Precision
    import xt.kernels.optim  # noqa: F401 - registers "fused_bf16_refresh"
    impl = "fused_bf16_refresh" if path == "fused_bf16_refresh" else "fused"
    opt = build_optimizer(model, OptimConfig(lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95), impl=impl))
    bf16 = Precision(name="bf16", autocast_dtype=torch.bfloat16, reason="bench")
    return Engine(model, opt, precision=bf16, weight_cast="per_step", max_grad_norm=MAX_NORM)


def step(engine, grads, path: str) -> None:
    """One `Engine.optim_step` with the gradients re-attached."""
    for p, g in zip(engine.model.parameters(), grads):
        p.grad = g
    if path == "separate":
        with _clip_not_folded():
            engine.optim_step()
    else:
        engine.optim_step()


def bytes_moved(engine, path: str) -> int:
    """Bytes the path must read and write (module docstring), from the parameter set."""
    n = sum(p.numel() for p in engine.model.parameters())
    copied = engine.compute_weights.num_params if engine.compute_weights is not None else 0
    norm = 4 * n
    if path == "separate":
        return norm + 8 * n + 28 * n + 6 * copied
    if path == "clip folded":
        return norm + 32 * n + 6 * copied
    return norm + 28 * n + 2 * copied


def check(cfg: dict, device: torch.device) -> dict:
    """2 steps of each path from the same start (tiny model): weights vs ``separate`` and the copies."""
    out, ref = {}, None
    for path in PATHS:
        model, grads = build(cfg | TINY_MODEL | {"vocab_size": 512}, device)
        engine = engine_for(path, model)
        for _ in range(2):
            step(engine, grads, path)
        weights = [p.detach().double() for p in model.parameters()]
        exact = all(torch.equal(c, m.detach().to(torch.bfloat16)) for m, c in engine.compute_weights.pairs)
        if ref is None:
            ref = weights
        diff = max(float((w - r).norm() / r.norm().clamp_min(1e-30)) for w, r in zip(weights, ref))
        out[path] = {"max_rel_weight_diff_vs_separate": diff, "copies_equal_cast": exact}
    return out


def _timer(device: torch.device):
    if device.type == "cuda":
        def run(fn, reps: int) -> list[float]:
            times = []
            for _ in range(reps):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b))
            return times
        return run

    def run_cpu(fn, reps: int) -> list[float]:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return times
    return run_cpu


def copy_bandwidth(device: torch.device, gib: float) -> float:
    """GB/s of ``dst.copy_(src)`` (read + write counted) for `gib` GiB of fp32."""
    n = int(gib * 2**30 / 4)
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms = statistics.median(_timer(device)(lambda: dst.copy_(src), 10)[2:])
    del src, dst
    return 2 * n * 4 / (ms * 1e-3) / 1e9


def env(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
            "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if device.type == "cuda":
        import triton
        info |= {"gpu": torch.cuda.get_device_name(), "triton": triton.__version__, "cuda": torch.version.cuda}
    return info


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (a smoke run)")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out-dir", default=os.environ.get("OUT") or os.path.join(os.path.dirname(__file__), "..", "results"))
    args = p.parse_args()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    cfg = model_config(args.tiny)
    result = {"env": env(device), "max_grad_norm": MAX_NORM, "model": {k: cfg[k] for k in sorted(cfg)
              if k in ("hidden_size", "num_hidden_layers", "num_experts", "moe_intermediate_size", "vocab_size")},
              "check": check(cfg, device)}
    print("check (tiny model, 2 steps):", result["check"], flush=True)
    bw = copy_bandwidth(device, 0.0625 if args.tiny else 4.0)
    rows = []
    for path in PATHS:
        model, grads = build(cfg, device)
        engine = engine_for(path, model)
        times = _timer(device)(lambda: step(engine, grads, path), args.warmup + args.reps)[args.warmup:]
        ms = statistics.median(times)
        moved = bytes_moved(engine, path)
        rows.append({"path": path, "ms": ms, "GB moved": moved / 1e9, "GB/s": moved / (ms * 1e-3) / 1e9,
                     "ceiling ms": moved / (bw * 1e9) * 1e3,
                     "params": sum(q.numel() for q in model.parameters()),
                     "copied params": engine.compute_weights.num_params})
        print(f"{path}: {ms:.2f} ms", flush=True)
        del engine, model, grads
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base = rows[0]["ms"]
    for r in rows:
        r["speedup vs separate"] = base / r["ms"]
    result |= {"copy_bandwidth_GBps": bw, "rows": rows}
    print(table(rows, ["path", "ms", "GB moved", "GB/s", "ceiling ms", "speedup vs separate"]))
    print(f"copy bandwidth {bw:.0f} GB/s; {rows[0]['params'] / 1e9:.2f}B parameters, "
          f"{rows[0]['copied params'] / 1e9:.2f}B with bf16 copies")
    path = write_json(args.out_dir, "optim-tiny-cpu" if args.tiny else "optim", result)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
