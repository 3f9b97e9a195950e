"""`xt train`: compose config, data, model, parallel layout and the engine into one run.

Every piece is built by the package that owns its section (docs/architecture.md, Where a run is
assembled): the model by xt.models, the layout, this rank's loader and the export hook by
xt.parallel, the loader by xt.data, the trainer by xt.core. This module only orders those calls,
prints the banner and reports.
"""
from __future__ import annotations

import functools
import os
import shlex
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import msgspec
import torch
from rich.console import Console
from rich.markup import escape
from torch import nn

from xt.cli.config import XTConfig, load_xt_config
from xt.cli.config_cmd import write_run_config
from xt.cli.preflight import preflight
from xt.cli.step_time_text import step_time_line
from xt.core.checkpoint import latest_checkpoint, seed_everything
from xt.core.distributed import DistContext
from xt.core.engine import Trainer, TrainResult, read_metrics
from xt.data import build_eval_batches, build_loader, load_tokenizer, save_tokenizer
from xt.kernels.config import apply_kernels_config
from xt.models import finish_run_model, from_pretrained, run_model_source, generate, save_pretrained, section_config, unused_model_keys
from xt.parallel import apply_layout, check_layout, describe_layout, device_for_run, exporter, rank_loader

__all__ = ["run_train", "build_run", "greedy_sample", "resume_command", "hf_exporter", "parameter_counts"]


def greedy_sample(model, tokenizer, prompt: str, max_new_tokens: int, chat: bool = False, image: str = "",
                  vision=None) -> str:
    """Greedy continuation of `prompt` (wrapped in the chat template when `chat`), decoded; with
    `image` (and `vision`, the ``[data.vision]`` table) the user turn shows that image
    (`xt.data.vl_prompt.vl_prompt`: tiles and placeholder tokens as for training data).

    Raises:
        xt.data.DataError: an image that cannot be read (naming ``sample.image``).
    """
    if image:
        from xt.data.vl_prompt import vl_prompt
        ids, pixels = vl_prompt(tokenizer, vision, prompt, [image])
        new = generate(model, [ids], max_new_tokens, eos_token_id=tokenizer.eos_token_id, pixel_values=pixels)[0]
        return tokenizer.decode(new, skip_special_tokens=True)
    if chat:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                            add_generation_prompt=True, enable_thinking=False)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
    else:
        ids = tokenizer.encode(prompt, add_special_tokens=False)
    new = generate(model, [list(ids)], max_new_tokens, eos_token_id=tokenizer.eos_token_id)[0]
    return tokenizer.decode(new, skip_special_tokens=True)


def build_run(cfg: XTConfig, device: torch.device) -> tuple[nn.Module, DistContext, Any]:
    """The model of ``cfg.model`` on `device` (seed beforehand), laid out by ``cfg.kernels`` and
    ``cfg.parallel``, and this rank's loader of ``cfg.data``: ``(model, dist, loader)``.

    A randomly initialised model is built on the meta device, laid out there and materialised on
    `device` with this rank's shards only (:func:`xt.parallel.apply_layout`); its values equal an
    eager single-process build of the same seed (docs/architecture.md, Meta-device construction).
    A model loaded with ``model.init_from`` from an HF folder is built on meta too and each rank
    reads only its shards' rows of the safetensors files (:func:`xt.models.run_model_source`); XT
    weights (DCP) are loaded after the layout, each rank its shards (:func:`xt.models.finish_run_model`).

    Raises:
        what :func:`xt.models.build_run_model` and :func:`xt.parallel.apply_layout` raise.
    """
    model, read = run_model_source(cfg.model, device)
    apply_kernels_config(cfg.kernels)
    model, dist = apply_layout(model, cfg.parallel, device_type=device.type, device=device, read=read)
    finish_run_model(cfg.model, model)  # init_from XT weights: DCP loads each rank's shards
    split = cfg.eval.split if cfg.eval.enabled else 0.0
    return model, dist, rank_loader(functools.partial(build_loader, cfg.data, eval_split=split), dist)


def hf_exporter(cfg: XTConfig, dist: DistContext) -> Callable[[nn.Module, Path], None]:
    """The run's ``export_hf(model, path)`` hook: the HF weights and configs
    (``xt.parallel.exporter(save_pretrained, dist)``: every rank gathers, the main rank writes),
    then, on the main rank, the tokenizer of ``[data]`` with its chat template
    (`xt.data.save_tokenizer`), so the folder alone is enough for transformers. Files are at most
    ``checkpoint.hf_max_shard_size``."""
    export = exporter(functools.partial(save_pretrained, max_shard_size=cfg.checkpoint.hf_max_shard_size), dist)

    def hook(model: nn.Module, path: Path) -> None:
        export(model, path)
        if getattr(dist, "is_main", True):
            save_tokenizer(cfg.data.tokenizer, path)

    return hook


def run_train(config: str | Path | None, overrides: Sequence[str] = (), resume: str | None = None,
              console: Console | None = None) -> TrainResult:
    """Train as `config` says (see :mod:`xt.cli.config`); returns the engine's `TrainResult`.

    Prints where the outputs are (metrics JSONL, loss-curve PNG, checkpoints, HF export) and a
    greedy sample from the exported model. The resolved config goes to ``train.out_dir/config.toml``.

    Raises:
        xt.core.config.ConfigError: bad config, including bad ``[model.config]`` fields and missing
            ``model.init_from`` folders (named key, file and line; before any model is built).
        xt.data.DataError: unreadable, malformed or empty data (file:line; before any model is built).
        xt.parallel.LayoutError: a ``[parallel]`` layout that cannot work (before any model is built).
        xt.core.errors.CheckpointError: a resume path that is not a checkpoint of this model.
        (All four are `xt.core.errors.XTError`; the ``xt`` command prints them without a traceback.)
    """
    console = console or Console(soft_wrap=True)  # piped logs keep one line per step
    cfg: XTConfig = load_xt_config(config, overrides)
    preflight(cfg, config, overrides, resume)  # model config, data, resume path: before anything is built
    check_layout(cfg.parallel, section_config(cfg.model))
    t0 = time.perf_counter()
    device = device_for_run()
    seed_everything(cfg.train.seed)
    unused = unused_model_keys(cfg.model)
    if unused:
        console.print(f"[yellow]warning[/yellow]: {escape(str(config))}: {escape('[model.config]')} keys that "
                      f"this model family does not read (a typo?): {escape(', '.join(unused))}")
    model, dist, loader = build_run(cfg, device)
    is_main = getattr(dist, "is_main", True)
    n_params, n_local = parameter_counts(model)
    rank_data = getattr(loader, "loader", loader)  # under SP: the wrapped data-parallel loader
    evals = rank_loader(functools.partial(build_eval_batches, cfg.data, cfg.eval), dist) if cfg.eval.enabled else None
    if is_main:
        arch = (getattr(model.config, "to_hf_dict", lambda: {})().get("architectures") or [type(model).__name__])[0]
        console.print(f"[bold]xt train[/bold] {config}: {arch}, "
                      f"{n_params / 1e6:.1f}M parameters ({n_local / 1e6:.1f}M on this rank), device {device}, "
                      f"world size {getattr(dist, 'world_size', 1)}; setup {time.perf_counter() - t0:.1f}s")
        summary = getattr(rank_data, "summary", None)
        if callable(summary):
            console.print(f"data: {summary()}")
        if evals is not None:
            held = getattr(evals, "loader", evals)
            console.print(f"eval: {held.num_tokens} held-out label tokens every {cfg.eval.every_steps} steps "
                          f"({len(held)} micro-batches on this rank)", highlight=False)
    trainer = Trainer(model, loader, cfg.train, cfg.optim, cfg.schedule, cfg.checkpoint, dist=dist,
                      export_hf=hf_exporter(cfg, dist), console=console, eval_batches=evals,
                      eval_every=cfg.eval.every_steps, tracking=cfg.tracking,
                      run_config=msgspec.to_builtins(cfg))
    if is_main:
        console.print(f"precision: {escape(trainer.precision_summary)}", highlight=False)
        console.print(f"layout: {escape(describe_layout(cfg.parallel, dist, model))}", highlight=False)
        if device.type == "cuda":
            alloc = os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or "torch's default"
            console.print(f"cuda allocator: PYTORCH_CUDA_ALLOC_CONF={escape(alloc)}", highlight=False)
    resume = resume if resume is not None else cfg.checkpoint.resume
    if is_main and (resume is not None or latest_checkpoint(cfg.train.out_dir) is None):
        write_run_config(cfg, config)  # not over the config of another run that fit() will refuse
    result = trainer.fit(resume=resume)
    skipped = getattr(rank_data, "skipped", 0)
    if is_main:
        realised = getattr(rank_data, "realised_mix", None)
        _report(console, cfg, result, skipped, resume_command(config, overrides), realised() if realised else None)
    return result


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """``(total, on this rank)`` parameter counts: a sharded parameter (a DTensor, FSDP2 or EP)
    counts its global size in the total and its local shard on this rank; tied ones count once."""
    total = local = 0
    for p in model.parameters():
        total += p.numel()  # a DTensor's numel() is its global size
        local += p.to_local().numel() if hasattr(p, "to_local") else p.numel()
    return total, local


def resume_command(config: str | Path | None, overrides: Sequence[str], command: str = "train") -> str:
    """The shell command that continues this run: ``xt COMMAND CONFIG [--set ...] --resume auto``
    (`command`: "train" or "rl")."""
    sets = "".join(f" --set {shlex.quote(o)}" for o in overrides)
    return f"xt {command} {shlex.quote(str(config))}{sets} --resume auto"


def _report(console: Console, cfg: XTConfig, result: TrainResult, skipped: int, again: str,
            mix: dict[str, float] | None = None) -> None:
    out = Path(cfg.train.out_dir)
    start = int(result.resumed_from.name.split("-")[-1]) if result.resumed_from else 0
    if result.interrupted or result.out_of_time:
        why = result.interrupted or f"train.max_minutes = {cfg.train.max_minutes:g}"
        console.print(f"\n[bold]stopped[/bold] by {why} after step {result.step} of {cfg.train.steps}; "
                      f"checkpoint {result.checkpoint}", highlight=False)
        console.print(f"  continue with: {escape(again)}", highlight=False)
    elif result.step == start:
        console.print(f"\n[bold]done[/bold]: already at step {result.step} (train.steps = {cfg.train.steps}); "
                      "nothing to train")
    else:
        console.print(f"\n[bold]done[/bold]: steps {start + 1}-{result.step} in {result.wall_s:.0f}s"
                      + (" (data ran out)" if result.stopped_early else ""))
        times = step_time_line(read_metrics(result.metrics_path, strict=False)[start:])
        if times:
            console.print(times)
    if skipped:
        console.print(f"skipped {skipped} bad records (data.on_error = 'skip')")
    if mix:
        console.print("  data mix    " + ", ".join(f"{name} {100 * share:.1f}%" for name, share in mix.items())
                      + " of the micro-batches drawn (weights " + ", ".join(f"{m.weight:g}" for m in cfg.data.mix) + ")",
                      highlight=False)
    if result.metrics.get("skipped_steps"):
        console.print(f"skipped {result.metrics['skipped_steps']} optimizer steps with a non-finite gradient "
                      "norm (train.nonfinite_grad = 'skip')")
    console.print(f"  metrics     {result.metrics_path}")
    if result.plot_path:
        console.print(f"  loss curve  {result.plot_path}")
    if result.checkpoint:
        console.print(f"  checkpoint  {result.checkpoint}")
    if result.hf_path:
        console.print(f"  HF model    {result.hf_path}")
    if cfg.sample.max_new_tokens and result.hf_path:
        tok = load_tokenizer(cfg.data.tokenizer)
        model = from_pretrained(result.hf_path)
        text = greedy_sample(model, tok, cfg.sample.prompt, cfg.sample.max_new_tokens, cfg.sample.chat,
                             cfg.sample.image, cfg.data.vision)
        shown = f" (image {cfg.sample.image})" if cfg.sample.image else ""
        console.print(f"  sample      {cfg.sample.prompt!r}{shown} -> {text!r}")
    console.print(f"  (run folder {out})")
