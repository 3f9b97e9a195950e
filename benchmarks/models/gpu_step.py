"""One bf16 training step of a DeepSeek-V3-shaped and a GPT-OSS-shaped model: tokens/s, MFU, peak memory.

Real hidden sizes (DeepSeek-V3: hidden 7168, 128 MLA heads, q/kv ranks 1536/512, experts of 2048,
top-8 in 8 groups keeping 4, 1 shared expert; GPT-OSS-20b: hidden 2880, 64 heads of 64, 8 KV heads,
experts of 2880, top-4, sinks, sliding window 128 on every other layer), with fewer layers and
experts so that fp32 master weights + AdamW state + activations fit one H200 (141 GB).

A step is what ``xt train`` does with ``train.dtype = "bf16"``: fp32 parameters, forward under
``torch.autocast(bfloat16)``, loss = CE sum / tokens + aux_loss, backward, fused AdamW, then the
model's ``post_optimizer_step`` (DeepSeek's aux-loss-free bias update). Timed with CUDA events
after warm-up, median of repeats, random (non-zero) tokens packed as several documents.

In the same run (docs/architecture.md, Tests and benchmarks): HF transformers' model of the same config and weights
(the competitor, same step recipe) and the ceiling, a dense bf16 matmul (8192^3) whose TFLOP/s
bounds MFU. Prints a table and writes ``benchmarks/results/models-gpu-step-<date>.json``.

    python benchmarks/models/gpu_step.py                       # both models, 4096 tokens
    python benchmarks/models/gpu_step.py --model gpt_oss --tokens 2048 --layers 4
    python benchmarks/models/gpu_step.py --device cpu --tiny   # smoke test of the script itself

Note: GPT-OSS attention (sinks + sliding window) runs on XT's masked reference path
(``SinksCoreAttention``: T x T scores per head), so its memory grows with tokens**2; DeepSeek's MLA
uses ``CoreAttention("auto")`` (flash varlen on CUDA).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

PEAK_TFLOPS = 989.0  # H100/H200 dense bf16, docs/architecture.md, MFU


def deepseek_config(layers: int, experts: int, tiny: bool):
    from xt.models.deepseek_v3 import DeepseekV3Config

    if tiny:
        return DeepseekV3Config(vocab_size=512, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                                num_hidden_layers=layers, num_attention_heads=4, n_routed_experts=experts,
                                num_experts_per_tok=2, n_group=2, topk_group=1, kv_lora_rank=16, q_lora_rank=24,
                                qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, first_k_dense_replace=1)
    return DeepseekV3Config(
        vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
        num_hidden_layers=layers, num_attention_heads=128, n_shared_experts=1, n_routed_experts=experts,
        num_experts_per_tok=8, n_group=8, topk_group=4, routed_scaling_factor=2.5, kv_lora_rank=512,
        q_lora_rank=1536, qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, first_k_dense_replace=1,
        max_position_embeddings=163840, rms_norm_eps=1e-6, seq_aux_loss_coef=1e-4,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "beta_fast": 32.0,
                         "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                         "original_max_position_embeddings": 4096})


def gpt_oss_config(layers: int, experts: int, tiny: bool):
    from xt.models.gpt_oss import GptOssConfig

    if tiny:
        return GptOssConfig(vocab_size=512, hidden_size=64, intermediate_size=64, num_hidden_layers=layers,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=experts,
                            num_experts_per_tok=2, sliding_window=8, router_aux_loss_coef=0.01)
    return GptOssConfig(vocab_size=201088, hidden_size=2880, intermediate_size=2880, num_hidden_layers=layers,
                        num_attention_heads=64, num_key_value_heads=8, head_dim=64, num_local_experts=experts,
                        num_experts_per_tok=4, sliding_window=128, router_aux_loss_coef=0.01)


def packed_batch(vocab: int, tokens: int, docs: int, device: torch.device) -> dict:
    """Random tokens as ``docs`` equal documents with pre-shifted labels (docs/contracts.md)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (tokens,), generator=g)
    n = tokens // docs
    cu = torch.arange(0, docs + 1, dtype=torch.int32) * n
    cu[-1] = tokens
    labels = torch.cat([ids[1:], ids[:1]])
    labels[cu[1:].long() - 1] = -100
    pos = torch.arange(tokens) - torch.repeat_interleave(cu[:-1].long(), cu[1:] - cu[:-1])
    return {"input_ids": ids.to(device), "labels": labels.to(device), "position_ids": pos.to(device),
            "cu_seqlens": cu.to(device), "max_seqlen": int((cu[1:] - cu[:-1]).max())}


def ours_step(model, batch, opt):
    """One XT training step (bf16 autocast, fp32 master weights)."""
    opt.zero_grad(set_to_none=True)
    with torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16):
        out = model(**batch, return_logits=False)
    n = int((batch["labels"] != -100).sum())
    loss = out.loss_sum / n + (out.aux_loss if out.aux_loss is not None else 0.0)
    loss.backward()
    opt.step()
    if hasattr(model, "post_optimizer_step"):
        model.post_optimizer_step()
    return float(loss.detach())


def hf_step(model, batch, opt, docs):
    """The same step for an HF model: each document is one row of a [docs, T/docs] batch."""
    opt.zero_grad(set_to_none=True)
    ids = batch["input_ids"].view(docs, -1)
    labels = batch["labels"].view(docs, -1)
    with torch.autocast(ids.device.type, dtype=torch.bfloat16):
        logits = model(ids).logits
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
    loss.backward()
    opt.step()
    return float(loss.detach())


def timed(fn, device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds per call (CUDA events on GPU, perf_counter on CPU) after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize(device)
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return times


def dense_ceiling_tflops(device: torch.device, n: int) -> float | None:
    """TFLOP/s of a dense bf16 ``n^3`` matmul (the ceiling)."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    t = statistics.median(timed(lambda: a @ b, device, 3, 10))
    return 2 * n ** 3 / t / 1e12


def run_one(name, cfg, args, device):
    """Measure ours (and HF's) on one config; returns a result dict."""
    from xt.models.deepseek_v3 import DeepseekV3ForCausalLM
    from xt.models.gpt_oss import GptOssForCausalLM, xt_to_hf as oss_to_hf

    batch = packed_batch(cfg.vocab_size, args.tokens, args.docs, device)
    res = {"model": name, "config": {k: getattr(cfg, k) for k in cfg.__struct_fields__}, "tokens": args.tokens,
           "docs": args.docs}
    torch.manual_seed(0)
    cls = DeepseekV3ForCausalLM if name == "deepseek_v3" else GptOssForCausalLM
    with torch.device(device):  # initialise on the GPU: billions of parameters, no host init
        model = cls(cfg)
    res["params"] = sum(p.numel() for p in model.parameters())
    res["active_params"] = model.active_params()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        t = statistics.median(timed(lambda: ours_step(model, batch, opt), device, args.warmup, args.repeats))
        res["xt"] = {"step_s": t, "tokens_per_s": args.tokens / t,
                     "mfu": model.flops_per_token(args.tokens // args.docs) * args.tokens / t / (PEAK_TFLOPS * 1e12),
                     "max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
    except torch.OutOfMemoryError as e:
        res["xt"] = {"error": f"OOM: {str(e)[:200]}"}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}  # host copy: frees the GPU
    state = oss_to_hf(state, cfg) if name == "gpt_oss" else state  # HF in-memory layouts
    del model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if args.no_hf:
        return res
    try:
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM

        hf_cfg = AutoConfig.for_model(**cfg.to_hf_dict())
        impl = "eager" if name == "gpt_oss" else "sdpa"
        with torch.device(device):
            hf = AutoModelForCausalLM.from_config(hf_cfg, attn_implementation=impl)
        hf.load_state_dict(state, strict=False)
        opt = torch.optim.AdamW(hf.parameters(), lr=1e-5, fused=device.type == "cuda")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t = statistics.median(timed(lambda: hf_step(hf, batch, opt, args.docs), device, args.warmup, args.repeats))
        res["hf"] = {"transformers": transformers.__version__, "attn_implementation": impl, "step_s": t,
                     "tokens_per_s": args.tokens / t,
                     "max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
        del hf, opt
    except torch.OutOfMemoryError as e:
        res["hf"] = {"error": f"OOM: {str(e)[:200]}"}
    except Exception as e:  # noqa: BLE001 - the competitor may be unavailable; record why
        res["hf"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["deepseek_v3", "gpt_oss", "all"], default="all")
    p.add_argument("--tokens", type=int, default=4096, help="tokens per step (packed)")
    p.add_argument("--docs", type=int, default=2, help="documents the tokens are packed from")
    p.add_argument("--ds-layers", type=int, default=2, help="DeepSeek layers (first one dense)")
    p.add_argument("--ds-experts", type=int, default=32, help="DeepSeek routed experts (real: 256)")
    p.add_argument("--oss-layers", type=int, default=4, help="GPT-OSS layers")
    p.add_argument("--oss-experts", type=int, default=32, help="GPT-OSS experts (20b: 32)")
    p.add_argument("--oss-tokens", type=int, default=2048, help="GPT-OSS tokens per step (T^2 attention)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-hf", action="store_true", help="skip the HF transformers competitor")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (smoke test on CPU)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/models-gpu-step-DATE.json)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available; use --device cpu --tiny for a smoke test", file=sys.stderr)
        return 2
    results = []
    base_tokens = args.tokens
    for name in (["deepseek_v3", "gpt_oss"] if args.model == "all" else [args.model]):
        if name == "deepseek_v3":
            cfg = deepseek_config(args.ds_layers, args.ds_experts, args.tiny)
            args.tokens = base_tokens
        else:
            cfg = gpt_oss_config(args.oss_layers, args.oss_experts, args.tiny)
            args.tokens = args.oss_tokens if not args.tiny else base_tokens
        results.append(run_one(name, cfg, args, device))
        print(f"{name}: {json.dumps({k: results[-1].get(k) for k in ('xt', 'hf')}, default=str)}", flush=True)
    ceiling = dense_ceiling_tflops(device, 8192 if not args.tiny else 256)
    env = {"gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
           "torch": torch.__version__, "python": platform.python_version(),
           "dense_bf16_tflops_8192": ceiling, "peak_tflops_for_mfu": PEAK_TFLOPS}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    print(f"\n{env['gpu']} | torch {env['torch']} | dense bf16 ceiling: "
          f"{'n/a' if ceiling is None else f'{ceiling:.0f} TFLOP/s'}")
    print(f"{'model':12} {'tokens':>6} {'params':>8} {'active':>8} | {'xt tok/s':>9} {'MFU':>6} {'GiB':>6} |"
          f" {'HF tok/s':>9} {'GiB':>6} | {'xt/HF':>6}")
    for r in results:
        x, h = r.get("xt", {}), r.get("hf", {})
        ratio = x.get("tokens_per_s", 0) / h["tokens_per_s"] if "tokens_per_s" in h and "tokens_per_s" in x else None

        def f(v, spec):
            return "-" if v is None else format(v, spec)
        print(f"{r['model']:12} {r['tokens']:>6} {r['params'] / 1e9:>7.2f}B {r['active_params'] / 1e9:>7.2f}B |"
              f" {f(x.get('tokens_per_s'), '9.0f')} {f(x.get('mfu') and 100 * x['mfu'], '5.1f')}%"
              f" {f(x.get('max_memory_gib'), '6.1f')} | {f(h.get('tokens_per_s'), '9.0f')}"
              f" {f(h.get('max_memory_gib'), '6.1f')} | {f(ratio, '6.2f')}")
        for side in ("xt", "hf"):
            if "error" in r.get(side, {}):
                print(f"  {side}: {r[side]['error']}")
    out = Path(args.out) if args.out else (Path(__file__).resolve().parents[1] / "results" /
                                           f"models-gpu-step-{dt.date.today().isoformat()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "results": results}, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
