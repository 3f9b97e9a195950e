"""One bf16 training step of an InternVL-shaped model through ``xt train``, against transformers'
``InternVLForConditionalGeneration`` on the same batch and weights.

Shapes: the real InternViT-300M vision tower of InternVL3.5 (hidden 1024, 24 layers, 16 heads, MLP
4096, 448-pixel tiles of 14-pixel patches, pixel shuffle 0.5 -> 256 tokens per tile) and a few
layers of a real-width language model: Qwen3-8B's (hidden 4096, 32 heads, 8 KV heads, MLP 12288;
``--lm dense``, InternVL3.5-8B) or Qwen3-235B-A22B's MoE layers (128 experts of 1536, top-8;
``--lm moe``, the Intern-S1 shape with fewer experts by default so that it fits one GPU).

The batch is real: ``--samples`` copies of one chat record holding scikit-image's ``coffee.png``
(600x400 -> 3x2 tiles + thumbnail = 7 tiles, 1,792 image tokens) and a question/answer, preprocessed
by ``xt.data`` (the same bytes feed both sides). XT: ``xt train`` runs ``--warmup + --repeats``
steps of one micro-batch (all samples packed) with ``train.dtype = "bf16"``; its
``metrics.jsonl`` gives the step time (CUDA-synchronised), tokens/s and peak memory, median over the
steps after warm-up. transformers: the exported HF folder loaded with ``from_pretrained`` (sdpa
attention), the samples as a ``[samples, L]`` batch (equal lengths: no padding), bf16 autocast,
fp32 master weights, fused AdamW, CUDA events after warm-up, median. The ceiling is a dense bf16
8192^3 matmul. Prints a table and writes ``benchmarks/results/vl-internvl-step-<date>.json``.

    python benchmarks/vl/bench_internvl_step.py                      # dense LM, 2 layers, 4 samples
    python benchmarks/vl/bench_internvl_step.py --lm moe --layers 2 --experts 32
    python benchmarks/vl/bench_internvl_step.py --device cpu --tiny  # smoke test of the script itself
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "models"))
from gpu_step import dense_ceiling_tflops, timed  # noqa: E402  (the shared timing and ceiling)
PEAK_TFLOPS = 989.0  # H100/H200 dense bf16, docs/architecture.md, MFU
QWEN_VISION = {"image_token": "<|image_pad|>", "start_token": "<|vision_start|>", "end_token": "<|vision_end|>"}
IMAGE_PAD = 151655


def model_config(args) -> dict:
    """The HF ``config.json`` dict of the benchmarked model (see the module docstring)."""
    if args.tiny:
        vision = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
                  "image_size": 56, "patch_size": 14}
        text = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
                "head_dim": 16, "moe_intermediate_size": 32, "num_experts": 4, "num_experts_per_tok": 2}
    else:
        vision = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
                  "image_size": 448, "patch_size": 14, "layer_norm_eps": 1e-6}
        text = {"hidden_size": 4096, "intermediate_size": 12288, "num_attention_heads": 32, "num_key_value_heads": 8,
                "head_dim": 128, "moe_intermediate_size": 1536, "num_experts": args.experts, "num_experts_per_tok": 8}
    text = {"model_type": "qwen3_moe" if args.lm == "moe" else "qwen3", "vocab_size": 151936,
            "num_hidden_layers": args.layers, "rope_theta": 1000000.0, "max_position_embeddings": 40960,
            "router_aux_loss_coef": 0.0, "norm_topk_prob": True, "bos_token_id": 151643, "eos_token_id": 151645,
            **{k: v for k, v in text.items() if args.lm == "moe" or not (k.startswith(("moe_", "num_experts")))}}
    side = vision["image_size"] // vision["patch_size"]
    return {"architectures": ["InternVLForConditionalGeneration"], "model_type": "internvl",
            "image_token_id": IMAGE_PAD, "image_seq_length": side * side // 4, "downsample_ratio": 0.5,
            "tie_word_embeddings": False, "vision_config": vision, "text_config": text}


def write_data(folder: Path, samples: int) -> Path:
    """``samples`` identical records with scikit-image's coffee photo (asset ``skimage-data``)."""
    from xt.data.assets import asset_path

    rec = {"messages": [{"role": "user", "content": "<image>\nWhat is in this picture? Describe it."},
                        {"role": "assistant", "content": "A cup of coffee on a saucer, seen from above, with "
                                                         "latte art in the foam."}],
           "images": [str(asset_path("skimage-data") / "coffee.png")]}
    path = folder / "vl.jsonl"
    path.write_text("".join(json.dumps(rec) + "\n" for _ in range(samples)))
    return path


def toml_value(v) -> str:
    """A python value as a TOML literal (strings, numbers, bools, lists, inline tables)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"


def run_config(args, data: Path, out_dir: Path, tokens: int) -> str:
    """The ``xt train`` TOML of the benchmark run."""
    size = model_config(args)["vision_config"]["image_size"]
    vision = {"image_size": size, "image_seq_length": model_config(args)["image_seq_length"], **QWEN_VISION}
    sections = {
        "model": {"config": model_config(args)},
        "data": {"source": "files", "paths": [str(data)], "tokenizer": "qwen3", "tokens_per_micro_batch": tokens,
                 "shuffle": False, "vision": vision},
        "train": {"steps": args.warmup + args.repeats, "micro_batches_per_step": 1,
                  "dtype": "bf16", "out_dir": str(out_dir), "log_every": 1},
        "optim": {"lr": 1e-5},
        "checkpoint": {"every_steps": 10**6, "hf_export": True, "keep_last": 1},
        "sample": {"max_new_tokens": 0},
    }
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def xt_side(args, cfg_path: Path, out_dir: Path) -> dict:
    """Run ``xt train`` in a subprocess; median step time, tokens/s and peak memory after warm-up."""
    paths = [str(p) for p in sorted((ROOT / "packages").glob("*/src"))]  # this checkout first, then the caller's
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "xt.cli.main", "train", str(cfg_path)], env=env,
                          capture_output=True, text=True)
    log = (proc.stdout + proc.stderr)[-3000:]
    if proc.returncode != 0:
        return {"error": f"xt train exited {proc.returncode}: {log}"}
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    later = rows[args.warmup:] or rows
    return {"step_s": statistics.median(r["step_time_s"] for r in later),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in later),
            "mfu_lm_only": statistics.median(r["mfu"] for r in later) if later[0].get("mfu") is not None else None,
            "max_memory_gib": max(r["max_memory_gib"] for r in later), "loss": [r["loss"] for r in rows],
            "wall_s": time.perf_counter() - t, "log_tail": log[-600:]}


def hf_side(args, hf_dir: Path, data: Path, tokens: int, device: torch.device) -> dict:
    """transformers' model from the exported folder, one AdamW step on the same samples as a batch."""
    import transformers
    from transformers import InternVLForConditionalGeneration

    from xt.data.config import data_config_from_dict
    from xt.data.loader import build_loader

    size = model_config(args)["vision_config"]["image_size"]
    cfg = data_config_from_dict({"source": "files", "paths": [str(data)], "tokens_per_micro_batch": tokens,
                                 "shuffle": False, "vision": {"image_size": size, **QWEN_VISION,
                                                              "image_seq_length": model_config(args)["image_seq_length"]}})
    batch = next(build_loader(cfg))
    B = len(batch["cu_seqlens"]) - 1
    ids, labels = batch["input_ids"].view(B, -1).to(device), batch["labels"].view(B, -1).to(device)
    px = batch["pixel_values"].to(device)
    model = InternVLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32,
                                                             attn_implementation="sdpa").to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(input_ids=ids, pixel_values=px).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        loss.backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = statistics.median(timed(step, device, args.warmup, args.repeats))
    return {"transformers": transformers.__version__, "attn_implementation": "sdpa", "step_s": t,
            "tokens_per_s": ids.numel() / t, "batch": list(ids.shape), "tiles": int(px.shape[0]),
            "max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lm", choices=["dense", "moe"], default="dense")
    p.add_argument("--layers", type=int, default=2, help="language-model layers")
    p.add_argument("--experts", type=int, default=32, help="MoE experts (Qwen3-235B-A22B: 128)")
    p.add_argument("--samples", type=int, default=4, help="samples (documents) in the micro-batch")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (smoke test on CPU)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/vl-internvl-step-DATE.json)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available; use --device cpu --tiny for a smoke test", file=sys.stderr)
        return 2
    if device.type == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # xt train picks its device itself
    with tempfile.TemporaryDirectory(prefix="xt-vl-bench-") as tmp:
        tmp = Path(tmp)
        data = write_data(tmp, args.samples)
        per_sample = 1792 // (256 // model_config(args)["image_seq_length"]) + 64
        tokens = args.samples * per_sample + 64
        out_dir = tmp / "run"
        (tmp / "run.toml").write_text(run_config(args, data, out_dir, tokens))
        xt = xt_side(args, tmp / "run.toml", out_dir)
        hf = hf_side(args, out_dir / "hf", data, tokens, device) if "error" not in xt else {"error": "no HF folder"}
    env = {"gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
           "torch": torch.__version__, "python": platform.python_version(),
           "dense_bf16_tflops_8192": dense_ceiling_tflops(device, 8192), "peak_tflops_for_mfu": PEAK_TFLOPS}
    ratio = xt["tokens_per_s"] / hf["tokens_per_s"] if "tokens_per_s" in xt and "tokens_per_s" in hf else None
    print(f"\n{env['gpu']} | torch {env['torch']} | dense bf16 ceiling: "
          f"{'n/a' if env['dense_bf16_tflops_8192'] is None else format(env['dense_bf16_tflops_8192'], '.0f') + ' TFLOP/s'}")
    print(f"{'side':14} {'step s':>8} {'tokens/s':>10} {'peak GiB':>9}")
    for name, r in (("xt train", xt), ("transformers", hf)):
        if "error" in r:
            print(f"{name:14} error: {r['error'][:400]}")
            continue
        gib = "-" if r.get("max_memory_gib") is None else f"{r['max_memory_gib']:.1f}"
        print(f"{name:14} {r['step_s']:>8.3f} {r['tokens_per_s']:>10.0f} {gib:>9}")
    print(f"xt / transformers tokens/s: {'-' if ratio is None else f'{ratio:.2f}'}")
    out = Path(args.out) if args.out else (ROOT / "benchmarks" / "results" /
                                           f"vl-internvl-step-{dt.date.today().isoformat()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "args": vars(args), "model": model_config(args), "tokens": tokens,
                               "xt": xt, "hf": hf, "xt_over_hf": ratio}, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
