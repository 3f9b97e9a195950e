"""`xt plan CONFIG --world N`: per-GPU memory and estimated speed of a run's layout, without GPUs.

The model of ``[model]`` is built on the meta device (no memory, seconds even for 1T parameters);
:mod:`xt.parallel.memory_plan` predicts each term of rank 0's peak (the rank with the largest
shards), :mod:`xt.parallel.step_estimate` the step time from the committed H200 rate table.
``--search`` plans every valid layout of the world size (HSDP replicas, EP sizes, activation
checkpointing) and lists those that fit, fastest first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from rich.console import Console
from rich.table import Table

from xt.cli.config import XTConfig, load_xt_config
from xt.models import build_model, section_config
from xt.models.section import hf_dict
from xt.parallel import LayoutError, ParallelConfig, validate_layout
from xt.parallel.discover import config_sizes
from xt.parallel.memory_plan import GIB, MemoryPlan, ModelFacts, model_facts, plan_memory
from xt.parallel.step_estimate import RATES, StepEstimate, estimate_step

__all__ = ["LayoutPlan", "plan_layout", "largest_micro_batch", "search_layouts", "run_plan"]

EP_CHOICES = (1, 2, 4, 8, 16, 32, 64)
AC_CHOICES = (0.0, 0.5, 1.0)


@dataclass(frozen=True)
class LayoutPlan:
    """One layout's prediction: the layout, its memory at the run's micro-batch, the largest
    micro-batch (tokens per GPU) that fits, and the step estimate at the run's micro-batch."""

    layout: ParallelConfig
    memory: MemoryPlan
    max_tokens: int
    step: StepEstimate


def _compute_bytes(cfg: XTConfig) -> int:
    return 4 if cfg.train.dtype == "fp32" else 2  # "auto" is bf16 on an H200


def largest_micro_batch(facts: ModelFacts, layout: ParallelConfig, world: int, gpu_bytes: float,
                        compute_bytes: int) -> int:
    """The most tokens per GPU micro-batch whose predicted peak fits in `gpu_bytes` (0: none).

    Binary search over 1 .. 2**22 tokens (the prediction grows with tokens)."""
    def fits(t: int) -> bool:
        return plan_memory(facts, layout, world, tokens_per_micro_batch=t, compute_bytes=compute_bytes).total <= gpu_bytes
    if not fits(1):
        return 0
    lo, hi = 1, 1 << 22
    if fits(hi):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def plan_layout(model, facts: ModelFacts, layout: ParallelConfig, world: int, tokens: int, gpu_bytes: float,
                compute_bytes: int, seq_len: int, micro_batches: int = 1) -> LayoutPlan:
    """Memory, largest micro-batch and step estimate of `layout` (see :class:`LayoutPlan`)."""
    memory = plan_memory(facts, layout, world, tokens_per_micro_batch=tokens, compute_bytes=compute_bytes)
    expert = sum(math.prod(s) for n, s in facts.shapes.items() if n in facts.experts)
    dense = sum(math.prod(s) for s in facts.shapes.values()) - expert
    ac_share = layout.activation_checkpointing if not layout.activation_checkpointing_every_n \
        else 1 / layout.activation_checkpointing_every_n
    step = estimate_step(flops_per_token=model.flops_per_token(seq_len), tokens=memory.tokens_per_rank,
                         moe_layers=facts.moe_layers, top_k=facts.top_k, hidden=facts.hidden,
                         ep_size=layout.ep_size, fsdp_size=layout.resolved_fsdp_size(world),
                         dense_params=dense, expert_params=expert, recompute_share=ac_share,
                         gathered_bytes=2 if layout.param_dtype == "bf16" else 4, micro_batches=micro_batches,
                         cpu_offload=layout.cpu_offload)
    return LayoutPlan(layout, memory, largest_micro_batch(facts, layout, world, gpu_bytes, compute_bytes), step)


def search_layouts(model, facts: ModelFacts, base: ParallelConfig, world: int, tokens: int, gpu_bytes: float,
                   compute_bytes: int, seq_len: int, sizes: dict, micro_batches: int = 1) -> list[LayoutPlan]:
    """Every valid layout of `world` GPUs (HSDP replicas x FSDP, EP in 1..64, AC share 0 / 0.5 / 1,
    the rest of `base` kept) whose predicted peak fits `gpu_bytes` at `tokens`, fastest first."""
    out = []
    for rep in [d for d in range(1, world + 1) if world % d == 0]:
        for ep in EP_CHOICES:
            for ac in AC_CHOICES:
                try:
                    layout = ParallelConfig(**{**_fields(base), "hsdp_replicate": rep, "fsdp_size": world // rep,
                                               "ep_size": ep, "activation_checkpointing": ac,
                                               "activation_checkpointing_every_n": 0})
                    validate_layout(layout, world, **sizes)
                except (LayoutError, ValueError):
                    continue
                p = plan_layout(model, facts, layout, world, tokens, gpu_bytes, compute_bytes, seq_len, micro_batches)
                if p.memory.total <= gpu_bytes:
                    out.append(p)
    return sorted(out, key=lambda p: -p.step.tokens_per_s_per_gpu)


def _fields(cfg: ParallelConfig) -> dict:
    return {f: getattr(cfg, f) for f in cfg.__struct_fields__}


def _describe(layout: ParallelConfig, world: int) -> str:
    parts = [f"fsdp {layout.resolved_fsdp_size(world)}"]
    if layout.hsdp_replicate > 1:
        parts.insert(0, f"hsdp {layout.hsdp_replicate}")
    if layout.ep_size > 1:
        parts.append(f"ep {layout.ep_size}")
    if layout.sp_size > 1:
        parts.append(f"sp {layout.sp_size}")
    if layout.activation_checkpointing or layout.activation_checkpointing_every_n:
        parts.append(f"AC {layout.activation_checkpointing or f'1/{layout.activation_checkpointing_every_n}'}")
    return " x ".join(parts[:2]) + (", " + ", ".join(parts[2:]) if parts[2:] else "")


def _breakdown(p: LayoutPlan, world: int) -> Table:
    m = p.memory
    table = Table("per GPU (rank 0)", "GiB", title=_describe(p.layout, world))
    for name, value in (("parameters (fp32)", m.params), ("gradients (fp32)", m.grads),
                        ("AdamW state (fp32)", m.optimizer), ("bf16 compute copies", m.compute_copies),
                        ("FSDP2 root + 2 gathered layers", m.fsdp_buffers + m.fsdp_layer_buffers),
                        ("FSDP2 unsharded gradients (backward)", m.fsdp_grad_buffers),
                        ("activations", m.activations), ("recomputation (backward)", m.recompute),
                        ("loss buffers", m.loss), ("all-to-all buffers", m.all_to_all),
                        ("peak", m.total)):
        table.add_row(name, f"{value / GIB:.2f}")
    table.add_row("activations per token, no AC / every layer recomputed",
                  f"{m.activation_per_token / 2**20:.3f} / {m.activation_per_token_full_ac / 2**20:.3f} MiB")
    table.add_row("largest micro-batch that fits", f"{p.max_tokens:,} tokens")
    table.add_row("step estimate (compute + all-to-all + exposed FSDP" + (" + CPU offload copies)" if p.step.offload else ")"),
                  f"{p.step.total:.2f} s = {p.step.compute:.2f} + {p.step.all_to_all:.2f} + "
                  f"{max(0.0, p.step.fsdp - p.step.compute):.2f}" + (f" + {p.step.offload:.2f}" if p.step.offload else ""))
    table.add_row("tokens/s per GPU, MFU", f"{p.step.tokens_per_s_per_gpu:,.0f}, {p.step.mfu:.2f}")
    return table


def run_plan(config: str, overrides: Sequence[str] = (), *, world: int, gpu_memory_gib: float = 139.0,
             search: bool = False, tokens: int | None = None, console: Console | None = None) -> list[LayoutPlan]:
    """Plan `config`'s run on `world` GPUs of `gpu_memory_gib` GiB and print the result.

    Args:
        config, overrides: the run's TOML and ``--set`` overrides (``[model]``, ``[parallel]``,
            ``data.tokens_per_micro_batch``, ``data.max_seq_len``, ``train.dtype`` are read).
        world: number of GPUs.
        gpu_memory_gib: memory per GPU (an H200 has about 139 GiB usable).
        search: plan every valid layout and list those that fit, fastest first.
        tokens: tokens per GPU micro-batch (default ``data.tokens_per_micro_batch``).

    Returns:
        The planned layouts (one without `search`).

    Raises:
        xt.core.config.ConfigError: bad config (named key, file, line).
        xt.parallel.LayoutError: the config's layout does not fit `world` or the model (without `search`).
        ValueError: `world`, `gpu_memory_gib` or `tokens` not positive.
    """
    console = console or Console(soft_wrap=True, width=140)
    for name, value in (("--world", world), ("--gpu-memory", gpu_memory_gib), ("--tokens", tokens or 1)):
        if value <= 0:
            raise ValueError(f"{name} must be positive; got {value}")
    cfg = load_xt_config(config, list(overrides))
    sizes = config_sizes(section_config(cfg.model))
    if not search:
        validate_layout(cfg.parallel, world, **sizes)
    model = build_model(hf_dict(cfg.model), device="meta")
    facts = model_facts(model)
    tokens = tokens or cfg.data.tokens_per_micro_batch
    seq_len = min(cfg.data.max_seq_len or tokens, tokens)
    mb = cfg.train.micro_batches_per_step
    gpu_bytes = gpu_memory_gib * GIB
    cb = _compute_bytes(cfg)
    if search:
        plans = search_layouts(model, facts, cfg.parallel, world, tokens, gpu_bytes, cb, seq_len, sizes, mb)
    else:
        plans = [plan_layout(model, facts, cfg.parallel, world, tokens, gpu_bytes, cb, seq_len, mb)]
    n_params = sum(math.prod(s) for s in facts.shapes.values())
    console.print(f"[bold]xt plan[/bold] {config}: {n_params / 1e9:.1f}B parameters on {world} GPUs of "
                  f"{gpu_memory_gib:g} GiB; {tokens} tokens per GPU micro-batch x {mb} per step, "
                  f"{'bf16' if cb == 2 else 'fp32'} activations, fp32 master weights + AdamW")
    if search:
        table = Table("layout", "peak GiB", "max tokens/GPU", "step s", "tokens/s/GPU", "MFU")
        for p in plans[:15]:
            table.add_row(_describe(p.layout, world), f"{p.memory.total / GIB:.1f}", f"{p.max_tokens:,}",
                          f"{p.step.total:.2f}", f"{p.step.tokens_per_s_per_gpu:,.0f}", f"{p.step.mfu:.2f}")
        console.print(table)
    else:
        console.print(_breakdown(plans[0], world))
    if search and not plans:
        console.print(f"no layout of {world} GPUs fits {gpu_memory_gib:g} GiB at {tokens} tokens per GPU")
    used = ("mfu", "nvlink", "network") + (("h2d", "d2h") if any(p.layout.cpu_offload for p in plans) else ())
    console.print("rank 0 (the largest shards); step time from "
                  + "; ".join(f"{k} {v[0]:g} ({v[1]})" for k, v in RATES.items() if k.startswith(used)),
                  highlight=False)
    return plans
