"""`xt plan`'s predicted peak memory against the measured one, world 1, three model families x AC off/on.

For each case the script

1. predicts: ``xt.cli.plan.run_plan`` (what ``xt plan CONFIG --world 1`` prints) for the case's
   config, on the meta device (no memory); on the CPU also the prediction for torch's math
   attention (``plan_memory(..., math_attention=True, doc_tokens=L)``: the CPU's SDPA saves each
   document's ``[H, L, L]`` probabilities, which flash attention on CUDA does not), the same one
   ``tests/parallel/test_parallel_memory_plan.py`` checks;
2. measures, in a fresh process per case (``--case``, so no case's allocations reach the next):
   the model and step ``xt train`` builds (``run_model_source`` on meta, ``apply_kernels_config``,
   ``apply_layout``, the ``Trainer`` of the config and its ``train_step``: fp32 masters, AdamW, bf16
   autocast on CUDA, fp32 on the CPU), on random packed documents; the peak of the steps after the
   first (which creates AdamW's state): ``torch.cuda.max_memory_allocated`` (reset after step 1)
   on CUDA, torch's ``MemTracker`` (parameters, gradients, optimizer state tracked) on the CPU, as
   the CPU test measures;
3. prints predicted vs measured per case and writes ``{--out}/plan-validate-<device>-<date>.json``
   (atomically): every case's layout, tokens, parameter count, measured and predicted bytes (every
   term of the prediction), the ratio and whether it is within 10%.

Cases (``--device cuda``; 2.3-2.6B parameters, 4.5-5.1 GB in bf16, so fp32 masters, gradients and
AdamW take 34-38 GiB and the predicted peaks are 40-46 GiB): a Qwen3-MoE (hidden 2048, 12 layers, 32 experts top-4), a
DeepSeek-V3 shape (MLA, 64 experts top-6 in 8 groups, shared expert, 1 dense layer, MTP) and a
GPT-OSS shape (sinks, alternating sliding window, 16 experts top-4), each with activation
checkpointing off and on every layer; 8,192 tokens per micro-batch in 4 documents of 2,048.
``--device cpu``: the examples' tiny models with a 16,384-token vocabulary, 512 tokens in 4
documents, fp32 (the CPU test's models), AC off/on.

Next GPU session, one ``nvidia-h200`` call of about 3-5 minutes (each case ~25 s: a fresh process,
~13 s of seeded initialisation on the host, Triton's first compiles in the first case; plus
``measure_rates.py``'s ~30 s); carry the msgspec wheel as ``measure_rates.py``'s docstring says::

    set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \\
      && export PYTHONPATH=/tmp/site:$(ls -d $PWD/packages/*/src | tr '\\n' ':') PYTHONUNBUFFERED=1 \\
      && python3 benchmarks/plan/measure_rates.py --out $OUT 2>&1 | tee $OUT/measure_rates.log \\
      && python3 benchmarks/plan/validate_plan.py --out $OUT 2>&1 | tee $OUT/validate_plan.log

Here on the CPU: ``python benchmarks/plan/validate_plan.py --device cpu`` (about a minute).
``--cases qwen3_moe,gpt_oss_ac`` runs some cases only; ``--steps`` sets the steps per case (3).
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "parallel"))
TOL = 0.10

# (example whose [model.config] is the base, the sizes changed on CUDA)
FAMILIES = {
    "qwen3_moe": ("qwen3_moe_shakespeare.toml",
                  dict(hidden_size=2048, num_hidden_layers=12, num_attention_heads=16, num_key_value_heads=4,
                       head_dim=128, intermediate_size=6144, moe_intermediate_size=768, num_experts=32,
                       num_experts_per_tok=4, tie_word_embeddings=False)),
    "deepseek_v3": ("deepseek_v3_tiny.toml",
                    dict(vocab_size=129280, hidden_size=2048, num_hidden_layers=8, num_attention_heads=16,
                         q_lora_rank=768, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32,
                         v_head_dim=64, intermediate_size=6144, moe_intermediate_size=512, n_routed_experts=64,
                         num_experts_per_tok=6, n_group=8, topk_group=4, first_k_dense_replace=1, mtp_layers=1)),
    "gpt_oss": ("gpt_oss_tiny.toml",
                dict(vocab_size=201088, hidden_size=2048, intermediate_size=2048, num_hidden_layers=8,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=64, num_local_experts=16,
                     num_experts_per_tok=4, sliding_window=128, layer_types=["sliding_attention", "full_attention"] * 4)),
}
CPU_VOCAB = 16384  # the CPU test's: layers, not the LM head, hold most of the memory


def cases(device: str) -> dict[str, dict]:
    """``{name: {model, ac, tokens, doc_len, dtype}}`` for `device` (module docstring)."""
    out = {}
    for fam, (example, big) in FAMILIES.items():
        base = tomllib.loads((ROOT / "examples" / example).read_text())["model"]["config"]
        model = {**base, **big} if device == "cuda" else {**base, "vocab_size": CPU_VOCAB}
        tokens, doc_len = (8192, 2048) if device == "cuda" else (512, 128)
        for ac in (0.0, 1.0):
            out[fam + ("_ac" if ac else "")] = dict(model=model, ac=ac, tokens=tokens, doc_len=doc_len,
                                                    dtype="bf16" if device == "cuda" else "fp32")
    return out


def write_config(case: dict, folder: Path) -> Path:
    """The case as an ``xt train`` TOML (``[model.config]``, ``[parallel]``, ``[data]``, ``[train]``)."""
    def toml_value(v):
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()

    def table(name: str, d: dict) -> list[str]:
        lines, subs = [f"[{name}]"], []
        for k, v in d.items():
            if isinstance(v, dict):
                subs += table(f"{name}.{k}", v)
            elif v is not None:
                lines.append(f"{k} = {toml_value(v)}")
        return lines + [""] + subs

    text = "\n".join(table("model.config", case["model"])
                     + table("parallel", {"activation_checkpointing": case["ac"]})
                     + table("data", {"tokens_per_micro_batch": case["tokens"], "max_seq_len": case["doc_len"]})
                     + table("train", {"dtype": case["dtype"], "steps": 10, "out_dir": str(folder / "run"),
                                       "micro_batches_per_step": 1}))
    path = folder / "case.toml"
    path.write_text(text)
    return path


def predict(config: Path, case: dict, device: str) -> dict:
    """``xt plan``'s prediction (``run_plan``, world 1) and, on the CPU, the math-attention one."""
    from rich.console import Console

    from xt.cli.config import load_xt_config
    from xt.cli.plan import run_plan
    from xt.models import build_model
    from xt.models.section import hf_dict
    from xt.parallel.memory_plan import plan_memory
    (plan,) = run_plan(str(config), world=1, console=Console(file=io.StringIO(), width=200))
    out = {"xt_plan": plan.memory.as_dict(), "basis": "xt_plan"}
    if device == "cpu":
        cfg = load_xt_config(config)
        model = build_model(hf_dict(cfg.model), device="meta")
        math = plan_memory(model, cfg.parallel, 1, tokens_per_micro_batch=case["tokens"], compute_bytes=4,
                           fsdp=False, math_attention=True, doc_tokens=case["doc_len"])
        out.update(cpu_math_attention=math.as_dict(), basis="cpu_math_attention")
    return out


class _NoLoader:
    """The `Trainer` needs a loader object; the steps here get their micro-batches directly."""

    def __iter__(self):
        return iter(())

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def measure(config: Path, case: dict, device_name: str, steps: int) -> dict:
    """Build and step the case as ``xt train`` does (module docstring); the measured peak bytes."""
    from rich.console import Console

    from fsdp_world1 import make_batch
    from xt.cli.config import load_xt_config
    from xt.core.checkpoint import seed_everything
    from xt.core.engine import Trainer
    from xt.kernels.config import apply_kernels_config
    from xt.models import run_model_source
    from xt.parallel import apply_layout
    cfg = load_xt_config(config)
    device = torch.device("cuda", 0) if device_name == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    seed_everything(cfg.train.seed)
    t0 = time.perf_counter()
    model, read = run_model_source(cfg.model, device)
    apply_kernels_config(cfg.kernels)
    model, dist = apply_layout(model, cfg.parallel, device_type=device.type, device=device, read=read)
    trainer = Trainer(model, _NoLoader(), cfg.train, cfg.optim, cfg.schedule, cfg.checkpoint, dist=dist,
                      console=Console(file=io.StringIO()))
    built = time.perf_counter() - t0
    vocab = case["model"]["vocab_size"]
    batches = [make_batch(case["tokens"], case["doc_len"], vocab, device, seed=s) for s in range(steps)]
    rows = [trainer.train_step([batches[0]])]
    if device.type == "cuda":
        torch.cuda.synchronize()
        first_peak = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for mb in batches[1:]:
            rows.append(trainer.train_step([mb]))
        torch.cuda.synchronize()
        peak, extra = torch.cuda.max_memory_allocated(), {"first_step_peak": first_peak,
                                                          "max_reserved": torch.cuda.max_memory_reserved()}
    else:
        from torch.distributed._tools.mem_tracker import MemTracker
        tracker = MemTracker()
        tracker.track_external(model, trainer.engine.optimizer)
        with tracker:
            rows.append(trainer.train_step([batches[1]]))
        peak, extra = tracker.get_tracker_snapshot("peak")[device]["Total"], {}
    return {"peak": int(peak), **extra, "params": sum(p.numel() for p in model.parameters()),
            "build_s": round(built, 1), "step_s": [round(r["step_time_s"], 3) for r in rows],
            "loss": [round(r["loss"], 4) for r in rows], "precision": trainer.precision_summary}


def _child(a) -> int:
    case = cases(a.device)[a.case]
    got = measure(Path(a.config), case, a.device, a.steps)
    Path(a.result).write_text(json.dumps(got))
    return 0


def _run_case(name: str, case: dict, device: str, steps: int, tmp: Path) -> dict:
    folder = tmp / name
    folder.mkdir()
    config = write_config(case, folder)
    pred = predict(config, case, device)
    result = folder / "measured.json"
    cmd = [sys.executable, __file__, "--device", device, "--case", name, "--config", str(config),
           "--result", str(result), "--steps", str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    row = {"case": name, "activation_checkpointing": case["ac"], "tokens": case["tokens"], "doc_len": case["doc_len"],
           "dtype": case["dtype"], "model": case["model"], "predicted": pred}
    if proc.returncode != 0:
        row["error"] = proc.stderr[-4000:]
        return row
    got = json.loads(result.read_text())
    total = pred[pred["basis"]]["total"]
    row.update(measured=got, ratio=total / got["peak"], within_10pct=abs(total / got["peak"] - 1) <= TOL)
    return row


def _atomic_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--steps", type=int, default=3, help="training steps per case (>= 2)")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # child process: measure one case
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.steps < 2:
        ap.error("--steps must be >= 2 (the peak is read after the first step)")
    if a.case:
        return _child(a)
    all_cases = cases(a.device)
    names = [n for n in a.cases.split(",") if n] or list(all_cases)
    unknown = [n for n in names if n not in all_cases]
    if unknown:
        ap.error(f"--cases: unknown {unknown}; known: {list(all_cases)}")
    t0 = time.perf_counter()
    gpu = torch.cuda.get_device_name(0) if a.device == "cuda" else platform.processor() or "cpu"
    print(f"validate_plan: {len(names)} cases on {a.device} ({gpu}), torch {torch.__version__}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names, 1):
            row = _run_case(name, all_cases[name], a.device, a.steps, Path(tmp))
            rows.append(row)
            at = f"[{time.perf_counter() - t0:5.0f}s] {i}/{len(names)} {name:14s}"
            if "error" in row:
                print(f"{at} FAILED: {row['error'].strip().splitlines()[-1]}", flush=True)
                continue
            m, p = row["measured"], row["predicted"]
            print(f"{at} {m['params'] / 1e9:5.2f}B params  measured {m['peak'] / 2**30:7.3f} GiB  predicted "
                  f"{p[p['basis']]['total'] / 2**30:7.3f} GiB ({p['basis']})  {100 * (row['ratio'] - 1):+5.1f}%  "
                  f"{'ok' if row['within_10pct'] else 'OUTSIDE 10%'}  build {m['build_s']}s step {m['step_s'][-1]}s",
                  flush=True)
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    path = Path(a.out) / f"plan-validate-{a.device}-{date}.json"
    env = {"device": a.device, "name": gpu, "torch": torch.__version__, "python": platform.python_version(),
           "utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "steps": a.steps}
    _atomic_json(path, {"env": env, "tolerance": TOL, "cases": rows})
    ok = sum(bool(r.get("within_10pct")) for r in rows)
    print(f"wrote {path}: {ok}/{len(rows)} within {TOL:.0%}, {time.perf_counter() - t0:.0f}s", flush=True)
    return 0 if ok == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
