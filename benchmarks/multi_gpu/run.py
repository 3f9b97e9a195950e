"""Multi-GPU runs in one script: NCCL correctness, Qwen3-30B-A3B scaling, EP overlap, RL sync, comm.

It takes the GPUs it finds (``torch.cuda.device_count()``), or ``--world N`` gloo processes on the
CPU (what the tests run: tests/parallel/test_multi_gpu_script.py). Stages (``--stages``, comma list):

* ``correctness``: the parallel equivalence cases of tests/parallel (``parallel_cases.run_toy``
  against ``reference_toy`` on one device, compared by ``parallel_layouts.errors``) on N ranks:
  FSDP, HSDP, EP (N and N/2), Ulysses SP, activation checkpointing, and EP with skewed routing
  (all first choices on expert 0; half the experts empty = an idle EP rank). Two steps, SGD with
  momentum (an update linear in the gradient). bf16 on CUDA (model and data in bf16 on both sides,
  tolerance ``BF16_TOL``), fp32 on the CPU (``TOL`` = 1e-5, docs/architecture.md, Numerics). Then a
  DCP checkpoint saved on N ranks (FSDP x EP) is resumed on N/2 ranks (two micro-batches each, the
  same global batch) and the next step's loss, grad norm and parameters are compared.
  Each case prints the largest error it compared; any above tolerance fails the stage (exit 1).
* ``scaling``: ``xt train`` under torchrun on full-size Qwen3-30B-A3B (``QWEN3_30B``: the real
  config, built on the meta device) on Shakespeare (real text, Qwen3 tokenizer), FSDP over all GPUs
  with EP 1/2/4/8 at 4k and 16k tokens per micro-batch, and Ulysses SP over all GPUs at 64k (AC on).
  Reads tokens/s/GPU, MFU (medians after ``--warmup`` steps) and peak GiB from each run's
  metrics.jsonl (``bench_train.summarize``) and prints them next to the anchors (``ANCHORS``).
  ``--tiny`` runs the same code on bench_train's tiny model with token counts / 16 (CPU).
* ``overlap``: the EP = N, 4k case with ``parallel.ep_overlap`` off and on.
* ``comm``: bus bandwidth of ``all_gather_into_tensor``, ``reduce_scatter_tensor`` and
  ``all_to_all_single`` over all N ranks (benchmarks/multi_gpu/comm_bench.py: bf16, 16 MiB to 1 GiB per
  rank on CUDA, 64 and 256 KiB fp32 on the CPU; CUDA events after warm-up, the slowest rank, median).
  nccl-tests' definitions: ``algbw = size / time``, ``busbw = algbw * (N - 1) / N`` for all three
  (``2 (N - 1) / N`` is all-reduce's). Prints a table; its JSON also holds a ``format`` / ``env`` /
  ``rates`` block in measure_rates.py's format with ``nvlink_gbps`` = the smallest of the three bus
  bandwidths at 256 MiB (why: comm_bench.py), which ``python benchmarks/plan/measure_rates.py --install
  benchmarks/results/multi-gpu-comm-h200-w8-DATE.json`` writes into ``xt plan``'s table.
* ``rl_sync``: benchmarks/rl/bench_weight_sync.py (disaggregated ``xt rl`` on Ray, the three
  ``orchestrator.weight_sync`` modes) with ``--sync-hidden`` / ``--sync-layers`` as the size knob.

Every stage prints as it goes (tee-friendly, flushed) and stops starting work when ``--budget-s``
seconds have passed since the start (what was skipped is recorded), so a 10-minute device call
returns partial results. After each case the JSON ``multi-gpu-<stage>-<device>-w<N>-<date>.json``
(correctness: ``multi-gpu-correctness-<dtype>-...``)
is rewritten atomically under ``--out-dir`` ($OUT if set, else benchmarks/results/), and the
subprocess logs go next to it.

Device commands (the device machine has Python 3.12, no network and no msgspec: carry the cp312
msgspec wheel in ``.whl`` and install it offline first, as benchmarks/kernels/bench_optim.py does,
and carry the Qwen3 tokenizer and Shakespeare assets in ``.devcache/xt``: copy both ignored folders
from /work/main into the worktree, run with ``carry = [".whl", ".devcache"]``), from the
repository root, for kind nvidia-h200-x2 / -x4 / -x8::

    pip install --no-index .whl/msgspec-*-cp312-*.whl && export XT_CACHE=$PWD/.devcache/xt \\
        PYTHONPATH=$(ls -d packages/*/src | tr '\\n' ':') && \\
    python benchmarks/multi_gpu/run.py --stages correctness,scaling,overlap --budget-s 540 --out-dir $OUT \\
        2>&1 | tee $OUT/multi-gpu.log

A 48-layer run costs minutes of start-up (meta build, materialisation, compile warm-up), so one
10-minute call will not finish the whole grid: the budget cuts it and the JSON says what was
skipped. Split it over calls with ``--cases`` (names: ``4k_ep1 .. 4k_ep8``, ``16k_ep1 .. 16k_ep8``,
``64k_spN``; correctness cases as printed), e.g. on x8: call 1 ``--stages correctness,scaling
--cases fsdp,hsdp,ep,fsdp_x_ep_half,ep_one_expert,ep_empty_experts,sp,ep_sp_ac,dcp_resume_half,4k_ep8,4k_ep4``,
call 2 ``--stages scaling,overlap --cases 16k_ep8,64k_sp8``, call 3 the remaining EP sizes.

x2 and x4 cannot hold the 48-layer model's fp32 master weights and AdamW state (~490 GB in all);
add ``--layers 12`` (x2) or ``--layers 24`` (x4): the JSON records the layer count. ``rl_sync``
needs Ray on the device machine (``--stages rl_sync``, its own call).

``comm`` alone (a minute; only ``.whl`` to carry, ``carry = [".whl"]``; x8 is the node the planner
models, x2 / x4 give the same stage on fewer GPUs), for kind nvidia-h200-x2 / -x4 / -x8::

    pip install --no-index .whl/msgspec-*-cp312-*.whl && export PYTHONPATH=$(ls -d packages/*/src | tr '\\n' ':') && \\
    python benchmarks/multi_gpu/run.py --stages comm --budget-s 300 --out-dir $OUT 2>&1 | tee $OUT/multi-gpu-comm.log

then copy ``multi-gpu-comm-h200-wN-DATE.json`` from ``files_at`` into benchmarks/results/ and
``--install`` it as above (from the x8 run: the planner's node is 8 GPUs).

CPU (gloo; ``--tiny`` is required for scaling/overlap here)::

    python benchmarks/multi_gpu/run.py --world 2 --tiny --stages correctness,scaling,overlap,comm
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests" / "parallel"), str(ROOT / "benchmarks" / "train"),
                str(ROOT / "benchmarks" / "multi_gpu")]

from bench_train import CONFIG, TINY_MODEL, summarize, tail  # noqa: E402
from parallel_layouts import TOL, errors  # noqa: E402

from xt.models.common.safetensors_io import atomic_write_text  # noqa: E402

#: bf16 tolerance (relative, as ``errors`` measures): bf16 rounds each op to 2^-8 = 3.9e-3 and the
#: two runs sum in different orders and group sizes; docs/architecture.md's FSDP bf16-vs-fp32
#: contract allows loss 1e-2 / grads 5e-2. This compares bf16 with bf16, so 3e-2 for every quantity.
BF16_TOL = 3e-2
#: the toy of tests/parallel/parallel_toy_moe.py: 8 heads / 2 KV heads (SP up to 8), 8 experts (EP up to 8)
TOY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
           head_dim=4, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16)
#: Qwen3-30B-A3B (Qwen/Qwen3-30B-A3B config.json) as overrides of examples/qwen3_moe_5b.toml
#: (which is 8 layers of this width): 48 layers, 128 experts top-8, 40,960 positions.
QWEN3_30B = {"num_hidden_layers": 48, "hidden_size": 2048, "num_attention_heads": 32, "num_key_value_heads": 4,
             "head_dim": 128, "moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8,
             "vocab_size": 151936, "max_position_embeddings": 40960, "rope_theta": 1000000.0}
#: published anchors (as reported; 8xH100, Qwen3-30B-A3B, 4k)
ANCHORS = [{"name": "NeMo Automodel", "tokens_per_s_per_gpu": 12000, "mfu": 0.28, "hw": "8xH100", "seq": 4096},
           {"name": "torchtitan", "tokens_per_s_per_gpu": None, "mfu": 0.276, "hw": "8xH100", "seq": 4096}]
TINY_DIV = 16


class Budget:
    """Seconds left of ``--budget-s`` since the start."""

    def __init__(self, seconds: float) -> None:
        self.t0, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)


def say(*a) -> None:
    print(*a, flush=True)


def write_json(path: Path, obj: dict) -> None:
    """The stage's JSON, rewritten atomically (temp file, then rename)."""
    atomic_write_text(path, json.dumps(obj, indent=1, default=str))


# --- correctness --------------------------------------------------------------------------------------

def correctness_layouts(world: int) -> list[tuple[str, dict, str]]:
    """``(name, layout, skew)`` of the N-rank cases: FSDP, HSDP, EP N and N/2, SP, AC, skews."""
    half = max(world // 2, 1)
    out = [("fsdp", dict(fsdp_size=world), "none"),
           ("ep", dict(ep_size=world), "none"),
           ("ep_one_expert", dict(ep_size=world), "one_expert"),
           ("ep_empty_experts", dict(ep_size=world), "empty_experts"),
           ("sp", dict(sp_size=world), "none"),
           ("ep_sp_ac", dict(ep_size=world, sp_size=world, activation_checkpointing=1.0), "one_expert")]
    if world >= 2:
        out.insert(1, ("hsdp", dict(hsdp_replicate=2, fsdp_size=half), "none"))
    if world >= 4:
        out.insert(3, ("fsdp_x_ep_half", dict(ep_size=half), "none"))
    return out


def _docs(world: int, sp: int, steps: int = 2) -> list[list[list[int]]]:
    """Document lengths per step per data-parallel rank (varied; at least sp tokens in all)."""
    dp = world // sp
    return [[[5 + (3 * r + s) % 7, 9, 3 + s][: 1 + (r + s) % 3] for r in range(dp)] for s in range(steps)]


def _toy_spec(layout: dict, skew: str, docs, device: str, dtype: str, seed: int, **kw) -> dict:
    return dict(fn="parallel_cases:run_toy", model=TOY, seed=seed, skew=skew, docs=docs, lr=1e-2, max_norm=0.5,
                optim="sgd", dtype=dtype, device=device,
                layout=dict(layout, param_dtype=None, reduce_dtype=None), **kw)


def summarize_errors(errs: dict[str, tuple[float, str]], tol: float) -> dict:
    """The largest compared error, where it is, and every quantity above `tol`."""
    worst = max(errs, key=lambda k: errs[k][0])
    return {"max_err": errs[worst][0], "max_err_at": worst, "compared": len(errs), "tol": tol,
            "bad": [f"{k}: {d}" for k, (e, d) in errs.items() if e > tol][:20]}


def stage_correctness(args, budget: Budget, out: Path) -> bool:
    """Run every case on an N-rank pool against one device, then the DCP resume on N/2; True if all agree."""
    from parallel_cases import reference_toy
    from parallel_harness import Pool
    world, device, dtype = args.world, args.device, args.dtype
    tol = BF16_TOL if dtype == "bfloat16" else TOL
    backend = "nccl" if device == "cuda" else "gloo"
    result = {"world": world, "device": device, "dtype": dtype, "backend": backend, "tol": tol, "cases": []}
    ok = True
    say(f"== correctness: {world} ranks ({backend}, {dtype}) vs one {device}, tol {tol:g}")
    pool = Pool(world, backend)
    try:
        for i, (name, layout, skew) in enumerate(correctness_layouts(world)):
            if args.cases is not None and name not in args.cases.split(","):
                continue
            if budget.left() < 30:
                result["cases"].append({"case": name, "skipped": "time budget"})
                continue
            spec = _toy_spec(layout, skew, _docs(world, layout.get("sp_size", 1)), device, dtype, seed=i)
            t0 = time.perf_counter()
            got = pool.run(spec)
            row = {"case": name, "layout": layout, "skew": skew, **summarize_errors(errors(got, reference_toy(spec)), tol),
                   "seconds": round(time.perf_counter() - t0, 2)}
            ok &= not row["bad"]
            result["cases"].append(row)
            say(f"  {name:18s} {str(layout):58s} skew={skew:13s} max err {row['max_err']:.2e} "
                f"({row['max_err_at']}) {'OK' if not row['bad'] else 'FAIL'}")
            write_json(out, result)
        if args.cases is not None and "dcp_resume_half" not in args.cases.split(","):
            pass
        elif budget.left() >= 30:
            with tempfile.TemporaryDirectory() as tmp:
                row = dcp_resume(pool, world, device, dtype, tol, Path(tmp) / "ckpt")
            pool = None
            ok &= not row["bad"]
            result["cases"].append(row)
        else:
            result["cases"].append({"case": "dcp_resume_half", "skipped": "time budget"})
    finally:
        if pool is not None:
            pool.close()
    result["ok"] = ok
    write_json(out, result)
    say(f"correctness {'OK' if ok else 'FAILED'}; wrote {out}")
    return ok


def dcp_resume(pool, world: int, device: str, dtype: str, tol: float, ckpt: Path) -> dict:
    """Save on `world` ranks (FSDP x EP), resume on world/2 with two micro-batches per rank; closes `pool`."""
    from parallel_harness import Pool
    half = max(world // 2, 1)
    docs = _docs(world, 1, steps=2)
    save = dict(_toy_spec(dict(ep_size=world), "none", docs, device, dtype, seed=7, dir=str(ckpt)),
                fn="parallel_cases:run_dcp_save")
    a = pool.run(save)
    pool.close()
    small = Pool(half, pool_backend(device))
    try:
        b = small.run(dict(save, fn="parallel_cases:run_dcp_resume", micro=world // half,
                           layout=dict(ep_size=half, param_dtype=None, reduce_dtype=None)))
    finally:
        small.close()
    errs = {"next_loss": (abs(a["next_loss"] - b["next_loss"]) / abs(a["next_loss"]), f"{b['next_loss']} vs {a['next_loss']}"),
            "next_grad_norm": (abs(a["next_grad_norm"] - b["next_grad_norm"]) / abs(a["next_grad_norm"]), "")}
    for k, ref in a["next_params"].items():
        e = float((b["next_params"][k].double().cpu() - ref.double().cpu()).norm() / ref.double().norm())
        errs[f"params.{k}"] = (e, f"rel err {e:.2e}")
    row = {"case": "dcp_resume_half", "saved_on": world, "resumed_on": half, "next_loss_saver": a["next_loss"],
           "next_loss_resumed": b["next_loss"], **summarize_errors(errs, tol)}
    say(f"  dcp {world} -> {half} ranks: next loss {a['next_loss']:.6f} vs {b['next_loss']:.6f}, "
        f"max err {row['max_err']:.2e} ({row['max_err_at']}) {'OK' if not row['bad'] else 'FAIL'}")
    return row


def pool_backend(device: str) -> str:
    return "nccl" if device == "cuda" else "gloo"


# --- scaling / overlap ------------------------------------------------------------------------------------

def scaling_cases(world: int) -> list[tuple[str, int, int, int, int, float]]:
    """``(name, tokens, micro, ep, sp, ac)``: EP 1/2/4/8 (those <= world) at 4k and 16k, SP = world at 64k."""
    out = []
    for seq, micro in ((4096, 4), (16384, 1)):
        for ep in (1, 2, 4, 8):
            if ep <= world and world % ep == 0:
                out.append((f"{seq // 1024}k_ep{ep}", seq, micro, ep, 1, 0.0))
    if world > 1:
        out.append((f"64k_sp{world}", 65536, 1, 1, world, 1.0))
    return out


def train_overrides(args, tokens: int, micro: int, ep: int, sp: int, ac: float) -> list[str]:
    """The ``--set`` list of one `xt train` run (Qwen3-30B-A3B, or the tiny model with --tiny)."""
    model = dict(TINY_MODEL) if args.tiny else dict(QWEN3_30B, num_hidden_layers=args.layers)
    tokens = tokens // TINY_DIV if args.tiny else tokens
    o = [f"model.config.{k}={v}" for k, v in model.items()]
    o += [f"data.tokens_per_micro_batch={tokens}", f"data.max_seq_len={tokens}", f"train.micro_batches_per_step={micro}",
          f"train.steps={args.steps}", "train.log_every=1",
          f"parallel.ep_size={ep}", f"parallel.sp_size={sp}"]
    if ac:
        o.append(f"parallel.activation_checkpointing={ac}")
    if args.device == "cpu":
        o.append('train.dtype="fp32"')
    return o + list(args.set)


def run_logged(cmd: list[str], log: Path, timeout: float) -> tuple[int | str, float]:
    """Run `cmd` from the repo root in its own process group, output to `log`; on timeout the
    whole group is killed (torchrun's workers too, which would otherwise keep the GPUs).

    Returns:
        (exit code or "timeout", wall seconds).
    """
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            rc: int | str = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = "timeout"
    return rc, time.perf_counter() - t0


def run_train(args, name: str, ovr: list[str], log_dir: Path, timeout: float) -> dict:
    """`xt train` under torchrun on `args.world` ranks; the summary of its metrics.jsonl."""
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        ovr = ovr + [f"train.out_dir={json.dumps(str(tmp / 'run'))}"]
        log = log_dir / f"multi-gpu-train-{name}-w{args.world}.log"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.world}",
               "-m", "xt.cli.main", "train", str(CONFIG)] + [a for o in ovr for a in ("--set", o)]
        rc, wall = run_logged(cmd, log, timeout)
        metrics = tmp / "run" / "metrics.jsonl"
        steps = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.exists() else []
    row = {"case": name, "rc": rc, "wall_s": round(wall, 1), "log": log.name, "overrides": ovr}
    if steps:
        row.update(summarize_run(steps, args.warmup, args.world))
    if rc != 0:
        row["tail"] = tail(log)
    return row


def summarize_run(steps: list[dict], warmup: int, world: int) -> dict:
    """bench_train's summary of a run's metrics.jsonl rows plus tokens/s per GPU (tokens_per_s is
    over all ranks; MFU already per device) and the per-step rows kept."""
    s = summarize(steps, warmup)
    if s.get("tokens_per_s") is not None:
        s["tokens_per_s_per_gpu"] = s["tokens_per_s"] / world
    s["steps"] = [{k: x.get(k) for k in ("step", "loss", "tokens_per_s", "mfu", "max_memory_gib", "step_time_s")}
                  for x in steps]
    return s


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def scaling_table(rows: list[dict], world: int) -> str:
    """Rows (cases and the anchors): tokens/s/GPU, MFU %, peak GiB, step seconds."""
    lines = [f"{'case':>14} {'GPUs':>5} {'tok/s/GPU':>10} {'MFU %':>6} {'peak GiB':>9} {'step s':>7}  note"]
    for r in rows:
        mfu = r.get("mfu")
        note = "" if r.get("rc", 0) == 0 else f"rc={r.get('rc')}"
        lines.append(f"{r['case']:>14} {world:>5} {_fmt(r.get('tokens_per_s_per_gpu'), ',.0f'):>10} "
                     f"{_fmt(mfu and 100 * mfu, '.1f'):>6} {_fmt(r.get('peak_gib'), '.1f'):>9} "
                     f"{_fmt(r.get('step_time_s'), '.2f'):>7}  {note or r.get('error', '')}")
    for a in ANCHORS:
        lines.append(f"{a['name']:>14} {a['hw']:>5} {_fmt(a['tokens_per_s_per_gpu'], ',.0f'):>10} "
                     f"{100 * a['mfu']:>6.1f} {'-':>9} {'-':>7}  anchor, as reported, {a['seq'] // 1024}k")
    return "\n".join(lines)


def stage_train_cases(args, budget: Budget, out: Path, stage: str, cases: list[tuple[str, list[str]]]) -> dict:
    """Run `cases` (name, overrides) within the budget; rewrite `out` after each; print the table."""
    result = {"stage": stage, "world": args.world, "device": args.device, "tiny": args.tiny,
              "layers": None if args.tiny else args.layers, "warmup": args.warmup, "anchors": ANCHORS, "rows": []}
    for name, ovr in cases:
        left = budget.left()
        if left < 60:
            result["rows"].append({"case": name, "skipped": "time budget"})
            say(f"  {name}: skipped (time budget)")
            continue
        row = run_train(args, name, ovr, out.parent, timeout=left - 10)
        result["rows"].append(row)
        say(f"  {name}: rc={row['rc']} tok/s/GPU {_fmt(row.get('tokens_per_s_per_gpu'), ',.0f')} "
            f"MFU {_fmt(row.get('mfu') and 100 * row['mfu'], '.1f')} peak {_fmt(row.get('peak_gib'), '.1f')} GiB")
        write_json(out, result)
    result["table"] = scaling_table([r for r in result["rows"] if "skipped" not in r], args.world)
    write_json(out, result)
    say(result["table"])
    say(f"wrote {out}")
    return result


def stage_scaling(args, budget: Budget, out: Path) -> dict:
    say(f"== scaling: xt train on {args.world} ranks, {'tiny' if args.tiny else f'Qwen3-30B-A3B ({args.layers} layers)'}")
    cases = [(n, train_overrides(args, t, m, ep, sp, ac)) for n, t, m, ep, sp, ac in scaling_cases(args.world)
             if args.cases is None or n in args.cases.split(",")]
    return stage_train_cases(args, budget, out, "scaling", cases)


def stage_overlap(args, budget: Budget, out: Path) -> dict:
    say(f"== overlap: EP {args.world} at 4k, parallel.ep_overlap off / on")
    base = train_overrides(args, 4096, 4, args.world, 1, 0.0)
    cases = [(f"4k_ep{args.world}_overlap_{v}", base + [f"parallel.ep_overlap={v}"]) for v in ("false", "true")]
    return stage_train_cases(args, budget, out, "overlap", cases)


def stage_comm(args, budget: Budget, out: Path) -> dict:
    """benchmarks/multi_gpu/comm_bench.py's sizes on an N-rank pool, smallest first, within the budget;
    `out` rewritten after each size (with the ``rates`` block once a size is measured)."""
    import comm_bench as comm
    from parallel_harness import Pool
    if args.world < 2:
        raise SystemExit("--stages comm needs at least 2 ranks (bus bandwidth of one rank is 0)")
    dtype = "bfloat16" if args.device == "cuda" else "float32"  # the CPU's gloo check stays in fp32
    backend = pool_backend(args.device)
    sizes = comm.CUDA_SIZES if args.device == "cuda" else comm.CPU_SIZES
    result = {"stage": "comm", "world": args.world, "device": args.device, "dtype": dtype, "backend": backend,
              "definition": "algbw = size / time (size: each rank's larger buffer); busbw = algbw * (N - 1) / N "
                            "(nccl-tests, all-gather / reduce-scatter / all-to-all)", "rows": [], "skipped": []}
    say(f"== comm: {args.world} ranks ({backend}, {dtype}), sizes {[s >> 10 for s in sizes]} KiB")
    pool = Pool(args.world, backend)
    try:
        for size in sizes:
            if budget.left() < 20:
                result["skipped"].append({"bytes": size, "skipped": "time budget"})
                continue
            rows = pool.run({"fn": "comm_bench:run_rank", "bytes": size, "device": args.device, "dtype": dtype})
            result["rows"] += rows
            for r in rows:
                say(f"  {r['op']:15s} {r['bytes'] / 2**20:8.4g} MiB: busbw {r['busbw_gbps']:.2f} GB/s")
            result.update(comm.rates_block(result["rows"], args.world, args.device, dtype, backend, out.name))
            write_json(out, result)
    finally:
        pool.close()
    result["table"] = comm.comm_table(result["rows"])
    write_json(out, result)
    say(result["table"])
    if "rates" in result:
        say(f"nvlink_gbps (planner): {result['rates']['nvlink_gbps']['value']} GB/s "
            f"({result['rates']['nvlink_gbps']['source']})")
    say(f"wrote {out}")
    return result


def stage_rl_sync(args, budget: Budget, out: Path) -> dict:
    """benchmarks/rl/bench_weight_sync.py with the size knob; its JSON goes to `out`."""
    say(f"== rl_sync: hidden {args.sync_hidden}, {args.sync_layers} layers")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "rl" / "bench_weight_sync.py"), "--hidden", str(args.sync_hidden),
           "--layers", str(args.sync_layers), "--out", str(out)]
    rc, wall = run_logged(cmd, out.with_suffix(".log"), max(budget.left() - 10, 1))
    say("\n".join(tail(out.with_suffix(".log"), 8)))
    return {"rc": rc, "wall_s": wall}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, plus ``device`` ("cuda" when GPUs are found and --world is not given), ``world``,
    ``dtype`` and ``stage_list``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", default="correctness,scaling,overlap",
                    help="comma list of correctness, scaling, overlap, rl_sync, comm")
    ap.add_argument("--world", type=int, default=None, help="CPU gloo processes (default: the GPUs found)")
    ap.add_argument("--tiny", action="store_true", help="scaling/overlap on the tiny model (tokens / 16)")
    ap.add_argument("--layers", type=int, default=48, help="Qwen3-30B-A3B layers (48 = the real model)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--budget-s", type=float, default=540.0)
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                    help="correctness dtype (default bf16 on CUDA, fp32 on the CPU)")
    ap.add_argument("--cases", default=None, help="comma list of case names of correctness (+ dcp_resume_half) and "
                    "scaling (e.g. 4k_ep8,16k_ep8,64k_sp8); default all")
    ap.add_argument("--sync-hidden", type=int, default=2048)
    ap.add_argument("--sync-layers", type=int, default=8)
    ap.add_argument("--set", action="append", default=[], help="extra xt train override (scaling, overlap)")
    ap.add_argument("--out-dir", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    args.stage_list = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(args.stage_list) - {"correctness", "scaling", "overlap", "rl_sync", "comm"})
    if unknown:
        ap.error(f"--stages: unknown stage(s) {unknown}; choose from correctness, scaling, overlap, rl_sync, comm")
    gpus = torch.cuda.device_count()
    args.device = "cuda" if gpus and args.world is None else "cpu"
    args.world = args.world or gpus or 2
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    return args


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run the stages in order; 1 when a correctness case disagrees."""
    args = parse_args(argv)
    stages = args.stage_list
    if args.device == "cpu" and not args.tiny and set(stages) & {"scaling", "overlap"}:
        sys.exit("--tiny is required for scaling/overlap on the CPU (Qwen3-30B-A3B needs GPUs)")
    budget = Budget(args.budget_s)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{'h200' if args.device == 'cuda' else 'cpu'}-w{args.world}{'-tiny' if args.tiny else ''}-{dt.date.today().isoformat()}"
    ok = True
    for stage in stages:
        out = out_dir / f"multi-gpu-{stage}{'-' + args.dtype if stage == 'correctness' else ''}-{tag}.json"
        if stage == "correctness":
            ok &= stage_correctness(args, budget, out)
        elif stage == "scaling":
            stage_scaling(args, budget, out)
        elif stage == "overlap":
            stage_overlap(args, budget, out)
        elif stage == "comm":
            stage_comm(args, budget, out)
        else:
            stage_rl_sync(args, budget, out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
