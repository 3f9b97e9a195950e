"""FSDP2 (+ activation checkpointing) at world size 1 over NCCL vs the plain single-process run.

Model: the demo Qwen3-MoE of ``examples/qwen3_moe_shakespeare.toml`` (XT's own model), random token
ids (uniform over the vocabulary, never all zeros) packed into documents of ``--doc-len`` tokens.
One invocation measures one mode and writes ``--out`` (JSON); ``--summarize`` merges the JSON files
into a table and ``benchmarks/results/parallel-fsdp-world1-<date>.json``.

Modes:
  plain_bf16    no torch.distributed; bf16 parameters, AdamW.                 (the competitor)
  fsdp_bf16     torchrun world 1: FSDP2 (bf16 parameters, fp32 gradient reduce), no AC.
  fsdp_ac_bf16  same + activation checkpointing of every layer.
  fsdp_ac_mp    fp32 master parameters, bf16 compute (MixedPrecisionPolicy), fp32 reduce, full AC.

Timing: CUDA events per step after warm-up, median over steps; tokens/s = tokens per step / median.
Peak memory: ``torch.cuda.max_memory_allocated`` over the whole run (model, optimizer state, steps).
MFU: ``model.flops_per_token(doc_len)`` (docs/architecture.md, MFU) over 989 TFLOP/s (H200 dense bf16 peak).
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tomllib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
PEAK_TFLOPS = 989.0


def model_config() -> dict:
    return tomllib.loads((ROOT / "examples" / "qwen3_moe_shakespeare.toml").read_text())["model"]["config"]


def make_batch(tokens: int, doc_len: int, vocab: int, device, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (tokens + 1,), generator=g)
    n_docs = tokens // doc_len
    cu = torch.arange(0, n_docs + 1, dtype=torch.int32) * doc_len
    labels = ids[1:tokens + 1].clone()
    labels[cu[1:] - 1] = -100
    return {"input_ids": ids[:tokens].to(device), "labels": labels.to(device),
            "position_ids": torch.arange(tokens).remainder(doc_len).to(device), "cu_seqlens": cu.to(device),
            "max_seqlen": doc_len}


def run(args) -> dict:
    import time

    from xt.models.registry import build_model
    cuda = args.device == "cuda"
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    dist_ctx = None
    if args.mode == "plain_bf16":
        model = build_model(model_config(), dtype=torch.bfloat16, device=device, attn_backend=args.attn_backend)
    else:
        from xt.parallel import ParallelConfig, parallelize
        mp = args.mode == "fsdp_ac_mp"
        model = build_model(model_config(), dtype=torch.float32 if mp else torch.bfloat16, device=device,
                            attn_backend=args.attn_backend)
        cfg = ParallelConfig(activation_checkpointing=0.0 if args.mode == "fsdp_bf16" else 1.0,
                             param_dtype="bfloat16" if mp else None, reduce_dtype="float32")
        model, dist_ctx = parallelize(model, cfg, device_type=device.type)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01)
    vocab = model_config()["vocab_size"]
    times = []
    losses = []
    for step in range(args.warmup + args.steps):
        batch = make_batch(args.tokens, args.doc_len, vocab, device, seed=step)
        n_tok = (batch["labels"] != -100).sum()
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        out = model(**batch)
        loss = out.loss_sum.float() / n_tok.float()
        if out.aux_loss is not None:
            loss = loss + out.aux_loss
        loss.backward()
        if dist_ctx is not None:
            dist_ctx.clip_grad_norm_(model.parameters(), 1.0)
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            end.record()
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(start.elapsed_time(end) / 1e3 if cuda else time.perf_counter() - t0)
            losses.append(float(loss.detach()))
    med = statistics.median(times)
    tps = args.tokens / med
    fpt = model.flops_per_token(args.doc_len) if hasattr(model, "flops_per_token") else float("nan")
    return {"mode": args.mode, "tokens_per_step": args.tokens, "doc_len": args.doc_len, "steps": args.steps,
            "median_step_s": med, "tokens_per_s": tps, "mfu": tps * fpt / (PEAK_TFLOPS * 1e12),
            "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
            "last_loss": losses[-1], "gpu": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
            "attn_backend": args.attn_backend, "model": {k: v for k, v in model_config().items() if isinstance(v, (int, float, str))}}


def summarize(files: list[str]) -> None:
    rows = [json.loads(Path(f).read_text()) for f in files]
    base = next((r for r in rows if r["mode"] == "plain_bf16"), None)
    print(f"{'mode':<14}{'tokens/s':>12}{'MFU %':>8}{'max GiB':>9}{'vs plain':>10}{'last loss':>11}")
    for r in rows:
        ratio = r["tokens_per_s"] / base["tokens_per_s"] if base else float("nan")
        print(f"{r['mode']:<14}{r['tokens_per_s']:>12.0f}{100 * r['mfu']:>8.2f}{r['max_memory_gib']:>9.2f}"
              f"{ratio:>10.2f}{r['last_loss']:>11.3f}")
    out = ROOT / "benchmarks" / "results" / f"parallel-fsdp-world1-{datetime.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["plain_bf16", "fsdp_bf16", "fsdp_ac_bf16", "fsdp_ac_mp"])
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--doc-len", type=int, default=2048)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--attn-backend", default="auto")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: smoke test only")
    p.add_argument("--out")
    p.add_argument("--summarize", nargs="+")
    args = p.parse_args()
    if args.summarize:
        summarize(args.summarize)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU (--device cpu for a smoke test)")
    result = run(args)
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
