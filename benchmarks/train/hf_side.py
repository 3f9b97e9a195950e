"""The Hugging Face side of bench_train.py: one setting, in its own process (so its memory is freed).

Trains ``transformers.Qwen3MoeForCausalLM`` built from the same ``[model.config]`` as the XT run,
on the same micro-batches (XT's loader, same DataConfig), with the same step recipe: gradient
accumulation over the step's micro-batches, loss = CE sum over all of the step's label tokens /
their number (+ router_aux_loss_coef x HF's load-balancing loss / micro-batches, as XT), global
grad-norm clip, AdamW with XT's lr / betas / eps / weight decay and parameter groups, XT's LR
schedule. Differences, by design (the usual way to train an HF model): bf16 parameters, gradients
and AdamW state on CUDA (XT keeps fp32 master weights under bf16 autocast), full [T, V] logits
with ``F.cross_entropy`` (XT uses a fused linear cross-entropy), SDPA with the block-causal mask
transformers derives from the restarting ``position_ids`` (XT: varlen attention over cu_seqlens).

    python benchmarks/train/hf_side.py --config examples/qwen3_moe_5b.toml --overrides '["..."]' \
        --steps 14 --result /tmp/hf.json

Writes ``{"steps": [...per-step metrics...], "info": {...}, "error": str | None}`` to --result
(also after an OOM, with the steps that finished).
"""
from __future__ import annotations

import argparse
import json
import math
import time
import traceback

import torch
import torch.nn.functional as F

EXPERTS_IMPL = "grouped_mm"  # the fastest transformers ships without hub kernels (deepgemm/sonicmoe need them)


def build_hf_model(hf_fields: dict, device: torch.device, dtype: torch.dtype, info: dict):
    """Qwen3MoeForCausalLM from HF config fields, SDPA, grouped_mm experts; notes go into `info`."""
    import transformers
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    fields = {k: v for k, v in hf_fields.items() if k != "model_type"}
    cfg = Qwen3MoeConfig(**fields, output_router_logits=True, use_cache=False)
    kw = {"attn_implementation": "sdpa", "dtype": dtype}
    with torch.device(device):
        try:  # documented: from_pretrained / from_config(..., experts_implementation=...)
            model = Qwen3MoeForCausalLM._from_config(cfg, experts_implementation=EXPERTS_IMPL, **kw)
        except (TypeError, ValueError, KeyError) as e:
            info["notes"].append(f"experts_implementation={EXPERTS_IMPL!r} refused by transformers "
                                 f"{transformers.__version__} ({type(e).__name__}: {e}); default experts")
            model = Qwen3MoeForCausalLM._from_config(cfg, **kw)
    model.to(device=device, dtype=dtype).train()
    info["experts_implementation"] = getattr(model.config, "_experts_implementation", None)
    info["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    if info["experts_implementation"] is None:
        info["notes"].append("this transformers has no experts_implementation (per-expert loop)")
    info["num_experts"] = getattr(cfg, "num_experts", getattr(cfg, "num_local_experts", None))
    import transformers.masking_utils as mu  # packed position_ids -> block-causal mask (no attention_mask given)
    info["packed_sequence_mask"] = hasattr(mu, "find_packed_sequence_indices")
    if not info["packed_sequence_mask"]:
        info["notes"].append("no packed-sequence masking in this transformers: attention is causal over the "
                             "whole micro-batch (crosses document boundaries)")
    return model


def adamw(model, optim_cfg, cuda: bool) -> torch.optim.AdamW:
    """torch.optim.AdamW with XT's groups (weight decay on ndim >= 2 only, unless decay_1d_params)."""
    decay = [p for p in model.parameters() if p.ndim >= 2 or optim_cfg.decay_1d_params]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [g for g in ({"params": decay, "weight_decay": optim_cfg.weight_decay},
                          {"params": rest, "weight_decay": 0.0}) if g["params"]]
    return torch.optim.AdamW(groups, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps,
                             fused=True if cuda else None, foreach=None if cuda else True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--overrides", default="[]", help="JSON list of xt --set strings")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--result", required=True)
    args = p.parse_args()

    import transformers
    from xt.models.section import hf_dict
    from xt.cli.config import load_xt_config
    from xt.core.engine import build_scheduler, effective_seq_len, max_memory_gib
    from xt.data import build_loader
    from xt.models.common.flops import causal_lm_flops_per_token
    from xt.models.qwen3 import Qwen3Config

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    cfg = load_xt_config(args.config, json.loads(args.overrides))
    fields = hf_dict(cfg.model)
    xc = Qwen3Config.from_hf_dict(fields)  # XT's own config: the same FLOPs formula as XT's MFU

    def flops_per_token(seq_len: int) -> float:
        return causal_lm_flops_per_token(xc.active_params(), xc.num_hidden_layers, xc.num_attention_heads,
                                         xc.head_dim, seq_len)

    peak = cfg.train.peak_tflops or (989.0 if cuda else None)
    info: dict = {"transformers": transformers.__version__, "torch": torch.__version__,
                  "dtype": str(dtype), "device": str(device), "notes": [], "peak_tflops": peak,
                  "active_params_for_mfu": xc.active_params()}
    steps: list[dict] = []
    error = None
    t_start = time.perf_counter()
    try:
        torch.manual_seed(cfg.train.seed)
        model = build_hf_model(fields, device, dtype, info)
        info["num_params"] = sum(p.numel() for p in model.parameters())
        opt = adamw(model, cfg.optim, cuda)
        sched = build_scheduler(opt, cfg.schedule, cfg.train.steps)
        info["optimizer"] = {"fused": cuda, "lr": cfg.optim.lr, "betas": list(cfg.optim.betas),
                             "eps": cfg.optim.eps, "weight_decay": cfg.optim.weight_decay}
        coef = float(fields.get("router_aux_loss_coef", 0.0))
        max_norm = cfg.train.max_grad_norm or math.inf
        loader = build_loader(cfg.data, dp_rank=0, dp_size=1)
        M = cfg.train.micro_batches_per_step
        info["setup_s"] = time.perf_counter() - t_start
        print(f"hf: {info['num_params'] / 1e6:.1f}M parameters, experts {info['experts_implementation']}, "
              f"attention {info['attn_implementation']}, {dtype}, setup {info['setup_s']:.1f}s", flush=True)
        for step in range(1, args.steps + 1):
            mbs = [next(loader) for _ in range(M)]  # drawn outside the timed region, as XT does
            n_lab = max(1, sum(int((mb["labels"] != -100).sum()) for mb in mbs))
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss_acc = torch.zeros((), device=device)
            aux_acc = torch.zeros((), device=device)
            for mb in mbs:
                ids = mb["input_ids"].to(device, non_blocking=True)[None]
                pos = mb["position_ids"].to(device, non_blocking=True)[None]
                lab = mb["labels"].to(device, non_blocking=True)  # pre-shifted: labels[t] = target of t
                out = model(input_ids=ids, position_ids=pos, use_cache=False)
                logits = out.logits[0]
                ce = F.cross_entropy(logits.float(), lab, ignore_index=-100, reduction="sum")
                objective = ce / n_lab
                if out.aux_loss is not None and coef:
                    objective = objective + coef * out.aux_loss / M
                    aux_acc += coef * out.aux_loss.detach().float()  # weighted, as XT logs it
                objective.backward()
                loss_acc += ce.detach().float()
                del out, logits, ce, objective
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            if cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            tokens = sum(int(mb["input_ids"].numel()) for mb in mbs)
            seq_len = effective_seq_len(mbs)
            tps = tokens / dt
            m = {"step": step, "loss": float(loss_acc) / n_lab, "aux_loss": float(aux_acc) / M,
                 "grad_norm": float(grad_norm), "lr": lr, "tokens_per_s": tps,
                 "mfu": flops_per_token(max(1, round(seq_len))) * tps / (peak * 1e12) if peak else None,
                 "max_memory_gib": max_memory_gib(device), "num_tokens": tokens, "loss_tokens": n_lab,
                 "seq_len": seq_len, "step_time_s": dt}
            steps.append(m)
            print(f"hf step {step}: loss {m['loss']:.4f} tok/s {tps:,.0f} step {dt:.3f}s "
                  f"mem {m['max_memory_gib']:.2f} GiB", flush=True)
    except torch.OutOfMemoryError as e:
        error = f"OOM at step {len(steps) + 1}: {str(e).splitlines()[0][:300]}"
        info["max_memory_gib_at_error"] = max_memory_gib(device)
        print(error, flush=True)
    except Exception as e:  # recorded, the benchmark goes on
        error = f"{type(e).__name__}: {str(e)[:500]}"
        traceback.print_exc()
    info["wall_s"] = time.perf_counter() - t_start
    with open(args.result, "w") as f:
        json.dump({"steps": steps, "info": info, "error": error}, f, indent=1)


if __name__ == "__main__":
    main()
