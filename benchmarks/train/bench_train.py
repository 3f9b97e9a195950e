"""`xt train` against Hugging Face transformers, same model and same tokens, in one invocation.

What is measured: whole training steps (forward + backward over the step's micro-batches, grad
clip, AdamW, LR schedule) of the ~5.6B-parameter Qwen3-MoE of examples/qwen3_moe_5b.toml (128
experts, top-8, 8 layers) on Shakespeare packed by xt.data, for several token layouts:

    setting   tokens/micro-batch = max_seq_len   micro-batches/step   sides
    4k_x16    4096                                16                   XT, HF
    16k_x4    16384                               4                    XT, HF
    4k_x1     4096                                1                    XT, HF
    64k_x1    65536   (activation checkpointing)  1                    XT
    128k_x1   131072  (activation checkpointing)  1                    XT
    256k_x1   262144  (activation checkpointing)  1                    XT

The micro-batch size is a budget: xt.data splits documents into chunks of <= max_seq_len and packs
them greedily, so a micro-batch holds <= that many tokens. Shakespeare's 42 texts are 0.5k-48k
Qwen3 tokens long, so at 64k-256k a micro-batch holds 1-7 whole plays (~38k / ~115k / ~246k
tokens, documents ~37k long; the JSON records tokens per step and `seq_len`, the token-weighted
document length). `--long-docs` instead concatenates the plays into one document for those
settings, so every micro-batch is one full-length document.

XT: ``python -m xt.cli.main train examples/qwen3_moe_5b.toml --set ...`` as a subprocess per
setting (fresh ``train.out_dir`` in a temp dir, log under --out-dir), then its metrics.jsonl.
HF: benchmarks/train/hf_side.py in a subprocess per setting: ``transformers.Qwen3MoeForCausalLM``
of the same config fields, bf16 parameters, fused AdamW, SDPA, grouped_mm experts, fed XT's own
loader (same DataConfig, so the same micro-batches) and timed like XT (CUDA synchronize +
perf_counter around the step; data drawn outside). MFU is XT's formula for both
(xt.models.common.flops: 6 x active params incl. LM head + 6 x L x H x hd x seq_len, over 989
TFLOP/s). Per side: median tokens/s and MFU over the steps after --warmup, peak GiB, warm-up
seconds (sum of the warm-up steps' time - warmup x median), max step time after warm-up / median,
wall time. A failure (OOM, nonzero exit) is recorded with the log's last lines; the run goes on.
Prints a table and writes ``bench-train-<date>.json`` (``-tiny`` added with --tiny) to --out-dir
($OUT if set, else benchmarks/results/) after every side of every setting, with the per-step
numbers, versions, GPU and the exact overrides; the subprocess logs go next to it.

    python benchmarks/train/bench_train.py                          # everything (H200)
    python benchmarks/train/bench_train.py --settings 4k_x16,16k_x4 --only xt
    python benchmarks/train/bench_train.py --tiny --steps 3 --warmup 1 --settings 4k_x1,4k_x16  # CPU
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "qwen3_moe_5b.toml"
HF_SIDE = Path(__file__).resolve().parent / "hf_side.py"
# name: (tokens per micro-batch = max_seq_len, micro-batches per step, HF too, activation checkpointing)
SETTINGS = {"4k_x16": (4096, 16, True, 0.0), "16k_x4": (16384, 4, True, 0.0), "4k_x1": (4096, 1, True, 0.0),
            "64k_x1": (65536, 1, False, 1.0), "128k_x1": (131072, 1, False, 1.0),
            "256k_x1": (262144, 1, False, 1.0)}
TINY_MODEL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "head_dim": 16, "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
              "intermediate_size": 128}
TINY_DIV = 16  # --tiny: token counts / 16 (4096 -> 256)


def overrides_for(name: str, args, tmp: Path, long_docs_file: Path | None) -> list[str]:
    """The `--set` list of one setting (shared verbatim by the XT run and the HF process)."""
    T, M, _, ac = SETTINGS[name]
    T = T // TINY_DIV if args.tiny else T
    o = [f"data.tokens_per_micro_batch={T}", f"data.max_seq_len={T}", f"train.micro_batches_per_step={M}",
         f"train.steps={args.steps}", f"train.out_dir={json.dumps(str(tmp / 'run'))}", "train.log_every=1"]
    if ac:
        o.append(f"parallel.activation_checkpointing={ac}")
    if long_docs_file is not None and not SETTINGS[name][2]:
        o += ['data.source="files"', f"data.paths=[{json.dumps(str(long_docs_file))}]", 'data.encoding="utf-8"']
    if args.tiny:
        o += [f"model.config.{k}={v}" for k, v in TINY_MODEL.items()]
        if not torch.cuda.is_available():
            o.append('train.dtype="fp32"')
    return o + list(args.set)


def write_long_docs(folder: Path) -> Path:
    """All Shakespeare texts (sorted, as xt.data reads them) concatenated into one UTF-8 document."""
    from xt.data.assets import asset_path
    texts = [p.read_bytes().decode("latin-1").replace("\r\n", "\n")
             for p in sorted(asset_path("shakespeare").glob("*_gut.txt"))]
    path = folder / "shakespeare_all.txt"
    path.write_text("\n\n".join(texts), encoding="utf-8")
    return path


def summarize(steps: list[dict], warmup: int) -> dict:
    """Medians after warm-up, peak memory, warm-up cost and the worst step after warm-up."""
    timed = steps[warmup:]
    if not timed:
        return {"error": f"only {len(steps)} steps finished, none after the {warmup} warm-up steps"}
    med = lambda k: statistics.median(s[k] for s in timed) if all(s.get(k) is not None for s in timed) else None
    t_med = med("step_time_s")
    return {"tokens_per_s": med("tokens_per_s"), "mfu": med("mfu"), "step_time_s": t_med,
            "peak_gib": max(s["max_memory_gib"] for s in steps if s.get("max_memory_gib") is not None),
            "warmup_s": sum(s["step_time_s"] for s in steps[:warmup]) - warmup * t_med,
            "max_step_over_median": max(s["step_time_s"] for s in timed) / t_med,
            "tokens_per_step": statistics.median(s["num_tokens"] for s in timed),
            "seq_len": statistics.median(s["seq_len"] for s in timed),
            "loss_first": steps[0].get("loss"), "loss_last": steps[-1].get("loss"), "steps_done": len(steps)}


def run_logged(cmd: list[str], log: Path, timeout: float | None) -> tuple[int | str, float]:
    """Run `cmd` from the repo root with output to `log`; (exit code or 'timeout', wall seconds)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        try:
            rc: int | str = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                           timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    return rc, time.perf_counter() - t0


def tail(log: Path, n: int = 15) -> list[str]:
    return log.read_text(errors="replace").splitlines()[-n:] if log.exists() else []


def run_xt(name: str, ovr: list[str], args, tmp: Path, stamp: str) -> dict:
    log = Path(args.out_dir) / f"bench-train-{stamp}-{name}-xt.log"
    cmd = [sys.executable, "-m", "xt.cli.main", "train", str(CONFIG)] + [a for o in ovr for a in ("--set", o)]
    rc, wall = run_logged(cmd, log, args.timeout)
    metrics = tmp / "run" / "metrics.jsonl"
    steps = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []
    keep = ("step", "loss", "aux_loss", "grad_norm", "tokens_per_s", "mfu", "max_memory_gib", "num_tokens",
            "loss_tokens", "seq_len", "step_time_s")
    res = {"rc": rc, "wall_s": wall, "log": str(log), "steps": [{k: s.get(k) for k in keep} for s in steps]}
    text = log.read_text(errors="replace")
    for key in ("precision", "layout", "data"):
        m = re.search(rf"^{key}: (.*)$", text, re.M)
        res[key] = m.group(1) if m else None
    m = re.search(r"([\d.]+)M parameters", text)
    res["num_params"] = round(float(m.group(1)) * 1e6) if m else None
    if rc != 0 or len(steps) < args.steps:
        oom = "OutOfMemory" in text or "out of memory" in text
        res["error"] = ("OOM" if oom else f"exit {rc}") + f", {len(steps)}/{args.steps} steps"
        res["log_tail"] = tail(log)
    res["summary"] = summarize(res["steps"], args.warmup) if steps else {"error": res.get("error")}
    return res


def run_hf(name: str, ovr: list[str], args, tmp: Path, stamp: str) -> dict:
    log = Path(args.out_dir) / f"bench-train-{stamp}-{name}-hf.log"
    result = tmp / "hf.json"
    cmd = [sys.executable, str(HF_SIDE), "--config", str(CONFIG), "--overrides", json.dumps(ovr),
           "--steps", str(args.steps), "--result", str(result)]
    rc, wall = run_logged(cmd, log, args.timeout)
    out = json.loads(result.read_text()) if result.exists() else {"steps": [], "info": {}, "error": None}
    res = {"rc": rc, "wall_s": wall, "log": str(log), **out}
    if rc != 0 or out["error"] or len(out["steps"]) < args.steps:
        res["error"] = out["error"] or f"exit {rc}, {len(out['steps'])}/{args.steps} steps"
        res["log_tail"] = tail(log)
    res["summary"] = summarize(out["steps"], args.warmup) if out["steps"] else {"error": res.get("error")}
    return res


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(results: list[dict]) -> str:
    head = (f"{'setting':<9} {'XT tok/s':>10} {'XT MFU':>7} {'XT GiB':>7} {'XT wu s':>8} {'XT max/med':>10} | "
            f"{'HF tok/s':>10} {'HF MFU':>7} {'HF GiB':>7} | {'XT/HF':>6}")
    lines = [head, "-" * len(head)]
    for r in results:
        x = r.get("xt", {}).get("summary", {})
        h = r.get("hf", {}).get("summary", {})
        xe, he = r.get("xt", {}).get("error"), r.get("hf", {}).get("error")
        ratio = (x["tokens_per_s"] / h["tokens_per_s"]) if x.get("tokens_per_s") and h.get("tokens_per_s") else None
        xs = (f"{fmt(x.get('tokens_per_s'), ',.0f'):>10} {fmt(x.get('mfu') and 100 * x['mfu'], '.1f'):>7} "
              f"{fmt(x.get('peak_gib'), '.1f'):>7} {fmt(x.get('warmup_s'), '.1f'):>8} "
              f"{fmt(x.get('max_step_over_median'), '.2f'):>10}")
        hs = (f"{fmt(h.get('tokens_per_s'), ',.0f'):>10} {fmt(h.get('mfu') and 100 * h['mfu'], '.1f'):>7} "
              f"{fmt(h.get('peak_gib'), '.1f'):>7}")
        if "hf" not in r:
            hs = f"{'(XT only / skipped)':>26}"
        lines.append(f"{r['setting']:<9} {xs} | {hs} | {fmt(ratio, '.2f'):>6}")
        for side, e in (("XT", xe), ("HF", he)):
            if e:
                lines.append(f"{'':<9} {side} failed: {e}")
    return "\n".join(lines)


def env_info() -> dict:
    try:
        import transformers
        tf = transformers.__version__
    except ImportError:
        tf = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"torch": torch.__version__, "transformers": tf, "python": platform.python_version(),
            "gpu": gpu, "cuda": torch.version.cuda, "host": platform.node(), "config": str(CONFIG.relative_to(ROOT))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--settings", default="all", help=f"comma list of {', '.join(SETTINGS)} (default all)")
    p.add_argument("--only", choices=("xt", "hf"), default=None, help="run one side only")
    p.add_argument("--steps", type=int, default=14)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--tiny", action="store_true", help="tiny Qwen3-MoE and token counts / 16 (CPU smoke test)")
    p.add_argument("--long-docs", action="store_true",
                   help="XT-only settings: one concatenated Shakespeare document, so micro-batches are full")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra xt --set, both sides")
    p.add_argument("--timeout", type=float, default=None, help="seconds per subprocess (default none)")
    p.add_argument("--out-dir", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    names = list(SETTINGS) if args.settings == "all" else [s.strip() for s in args.settings.split(",") if s.strip()]
    bad = [n for n in names if n not in SETTINGS]
    if bad:
        p.error(f"unknown settings {bad}; choose from {list(SETTINGS)}")
    if args.steps <= args.warmup:
        p.error("--steps must exceed --warmup")
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    stamp = dt.date.today().isoformat()
    out_json = Path(args.out_dir) / f"bench-train-{stamp}{'-tiny' if args.tiny else ''}.json"
    payload = {"benchmark": "bench_train", "date": dt.datetime.now().isoformat(timespec="seconds"),
               "env": env_info(), "argv": sys.argv[1:], "steps": args.steps, "warmup": args.warmup,
               "tiny": args.tiny, "long_docs": args.long_docs, "results": []}
    print(f"bench_train: {payload['env']}; settings {names}; {args.steps} steps, {args.warmup} warm-up; "
          f"JSON -> {out_json}", flush=True)
    root_tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    long_docs_file = write_long_docs(root_tmp) if args.long_docs else None
    try:
        for name in names:
            T, M, hf_too, ac = SETTINGS[name]
            tmp = root_tmp / name
            tmp.mkdir()
            ovr = overrides_for(name, args, tmp, long_docs_file)
            r = {"setting": name, "tokens_per_micro_batch": T // TINY_DIV if args.tiny else T,
                 "micro_batches_per_step": M, "activation_checkpointing": ac,
                 "long_docs": bool(long_docs_file) and not hf_too, "overrides": ovr}
            payload["results"].append(r)
            for side, runner in (("xt", run_xt), ("hf", run_hf)):
                if args.only not in (None, side) or (side == "hf" and not hf_too):
                    continue
                print(f"[{name}] {side} ...", flush=True)
                r[side] = runner(name, ovr, args, tmp, stamp)
                s = r[side]["summary"]
                print(f"[{name}] {side}: {r[side].get('error') or 'ok'}; wall {r[side]['wall_s']:.0f}s; "
                      f"{json.dumps({k: s.get(k) for k in ('tokens_per_s', 'mfu', 'peak_gib', 'loss_first')})}",
                      flush=True)
                shutil.rmtree(tmp / "run", ignore_errors=True)
                out_json.write_text(json.dumps(payload, indent=1, default=str))
            x, h = r.get("xt", {}), r.get("hf", {})
            if x.get("num_params") and h.get("info", {}).get("num_params"):
                r["num_params_match"] = abs(x["num_params"] - h["info"]["num_params"]) <= 1e5  # XT logs 0.1M
            out_json.write_text(json.dumps(payload, indent=1, default=str))
    finally:
        shutil.rmtree(root_tmp, ignore_errors=True)
    print("\n" + table(payload["results"]), flush=True)
    print(f"\nwrote {out_json}", flush=True)


if __name__ == "__main__":
    main()
