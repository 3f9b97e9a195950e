"""`xt rl`: a synchronous GRPO-family RL run, on one process or with its parts as Ray actors.

Order: config (`xt.cli.rl_config`) and its checks before anything is built (model section, task
samples, tokenizer, resume path) -> the orchestration: `xt.rl.loop.local.LocalRun` (this process)
or `xt.rl.cluster.RayRun` (``orchestrator.kind = "ray"``), both building the policy with
`xt.rl.loop.build.build_policy` (seed, `build_run_model`, `Engine.from_config`, `PolicyTrainer`
with a frozen reference copy when ``rl.kl_coef > 0``), the rollout engine and the reward pool ->
`PromptSource` here -> `GRPOLoop.step` per RL step, each making ``rollout.updates_per_step``
optimizer steps. Outputs under ``train.out_dir``: ``metrics.jsonl`` (one line per RL step),
``reward.png``, ``checkpoints/step-N`` (model, optimizer, engine/schedule, prompt position, weight
version, RNG; atomic; with ``--resume auto`` the run continues exactly as if it had not stopped, in
either orchestration) and ``hf/`` (the trained policy, with ``checkpoint.hf_export``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from rich.console import Console
from rich.markup import escape

from xt.cli.rl_config import RLRunConfig, load_rl_config
from xt.cli.train import resume_command
from xt.core.checkpoint import latest_checkpoint, resolve_resume
from xt.core.config.loader import config_error_at
from xt.core.distributed import LocalDistContext
from xt.core.errors import ConfigError
from xt.core.engine import read_metrics
from xt.core.engine.metrics import MetricsWriter
from xt.core.engine.report import ProgressReporter, plot_curves
from xt.core.engine.stop import StopWatch
from xt.data import load_tokenizer
from xt.models import check_model_section, section_config
from xt.rl.loop.build import check_trainer_layout
from xt.rl.loop.grpo import GRPOLoop
from xt.rl.loop.local import LocalRun
from xt.rl.loop.prompts import PromptSource, render_prompt, task_samples

__all__ = ["RLResult", "run_rl"]


@dataclass
class RLResult:
    """What `run_rl` did: the last optimizer step, the last RL step's metrics, output paths."""
    step: int
    metrics: dict[str, Any]
    metrics_path: Path
    plot_path: Path | None
    checkpoint: Path | None
    resumed_from: Path | None
    wall_s: float
    hf_path: Path | None = None
    interrupted: str | None = None  # "SIGINT" / "SIGTERM" when a signal stopped the run (checkpoint saved)
    out_of_time: bool = False  # train.max_minutes was spent (checkpoint saved)


def _tokenizer(cfg: RLRunConfig, config: Any, overrides: Sequence[str]):
    name = cfg.task.tokenizer
    if name == "model":
        if not cfg.model.init_from:
            raise config_error_at("task.tokenizer", "task.tokenizer = 'model' but model.init_from is not set: name a tokenizer "
                                  "('qwen3', 'llama3' or a folder)", path=config, overrides=overrides)
        name = cfg.model.init_from
    return load_tokenizer(name)


def _stop_ids(tok) -> list[int]:
    ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    for t in ("<|im_end|>", "<|eot_id|>"):
        i = tok.convert_tokens_to_ids(t) if t in tok.get_vocab() else None
        if i is not None:
            ids.add(i)
    return sorted(ids)


def run_rl(config: str | Path | None, overrides: Sequence[str] = (), resume: str | None = None,
           console: Console | None = None, until_step: int | None = None) -> RLResult:
    """Run RL as `config` says (module docstring).

    Args:
        config: the TOML file; overrides: ``--set`` entries; resume: "auto", a checkpoint folder, or
            None (then ``checkpoint.resume``).
        console: where to print (default stdout).
        until_step: stop after this optimizer step (the schedule still spans ``train.steps``).

    Raises:
        xt.core.config.ConfigError: a bad config entry, task or tokenizer (key, file, line).
        xt.core.errors.CheckpointError: a resume checkpoint that does not fit this run.
        xt.parallel.LayoutError: a ``[parallel]`` layout that cannot work on ``orchestrator.trainer_workers`` ranks.
        FileExistsError: a fresh start in an ``out_dir`` that already holds checkpoints.
    """
    console = console or Console(soft_wrap=True)
    t_start = time.perf_counter()
    cfg = load_rl_config(config, overrides)
    check_model_section(cfg.model, config, overrides)
    check_trainer_layout(cfg.parallel, cfg.orchestrator.trainer_workers, section_config(cfg.model))
    path = resolve_resume(resume if resume is not None else cfg.checkpoint.resume, cfg.train.out_dir)
    out_dir = Path(cfg.train.out_dir)
    if path is None and latest_checkpoint(out_dir) is not None:
        raise FileExistsError(f"{out_dir} already holds checkpoints (latest {latest_checkpoint(out_dir).name}); "
                              "resume with --resume auto or use another train.out_dir")
    try:
        samples = task_samples(cfg.task)
    except ConfigError as e:  # name the file and line of the task key
        if e.key and not e.path:
            raise config_error_at(e.key, str(e), path=config, overrides=overrides) from None
        raise
    tok = _tokenizer(cfg, config, overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prompts = PromptSource(samples, seed=cfg.task.seed)
    if cfg.orchestrator.kind == "ray":
        from xt.rl.cluster import RayRun
        run: Any = RayRun(cfg, out_dir)
    else:
        run = LocalRun(cfg, device, tok)
    try:
        return _loop(cfg, config, overrides, run, prompts, tok, path, out_dir, console, until_step, t_start)
    finally:
        run.close()


def _loop(cfg: RLRunConfig, config: Any, overrides: Sequence[str], run: Any, prompts: PromptSource, tok: Any, path: Path | None,
          out_dir: Path, console: Console, until_step: int | None, t_start: float) -> RLResult:
    overlap = cfg.orchestrator.max_staleness > 0
    loop = GRPOLoop(prompts, lambda s: render_prompt(tok, cfg.task, s),
                    lambda ids: tok.decode(ids, skip_special_tokens=True), run.rollout, run.reward,
                    run.trainer, rl=cfg.rl, rollout_cfg=cfg.rollout, stop_token_ids=_stop_ids(tok), overlap=overlap)
    extra = {"rl_buffer": loop} if overlap else {}  # the buffered rollout of the next step
    if path is not None:
        run.load(path, prompts, extra)
    if cfg.train.peak_tflops is not None:
        console.print("[yellow]warning[/yellow]: train.peak_tflops is not used by xt rl (it reports no MFU)")
    d = run.describe()
    oc = cfg.orchestrator
    where = "one process" if oc.kind == "local" else f"Ray, {oc.placement}" + (
        f" ({oc.rollout_workers} rollout workers, weights by {oc.weight_sync})" if oc.placement == "disaggregated"
        else f" ({oc.trainer_workers} trainer ranks, each sampling its share on a rollout copy)"
        if oc.trainer_workers > 1 else "")
    console.print(f"[bold]xt rl[/bold] {escape(str(config))}: {d['model']}, {d['params'] / 1e6:.1f}M "
                  f"parameters, device {d['device']} ({where}); task {cfg.task.source}:{cfg.task.name} "
                  f"({len(prompts.samples)} samples), "
                  f"{cfg.rollout.prompts_per_step} prompts x {cfg.rollout.group_size} samples per step, "
                  f"reward {cfg.rl.reward.function}, routing replay {d['replay']}; "
                  f"precision {escape(d['precision'])}; rollout precision "
                  f"{escape(d.get('rollout_precision', 'unknown'))}; trainer layout {escape(d.get('layout', 'plain'))}",
                  highlight=False)
    u = cfg.rollout.updates_per_step
    stop = min(cfg.train.steps, until_step if until_step is not None else cfg.train.steps)
    metrics_path = out_dir / "metrics.jsonl"
    step = run.step
    writer = MetricsWriter(metrics_path, step // u if path else None)
    last: dict[str, Any] = {}
    last_ckpt = path
    every = cfg.checkpoint.every_steps
    # SIGINT / SIGTERM / train.max_minutes: the RL step under way finishes, a checkpoint is saved and
    # the run stops; checkpoint.every_minutes saves between the every_steps ones (as xt train does)
    watch = StopWatch(cfg.train.max_minutes, cfg.checkpoint.every_minutes)
    why = None
    try:
        with ProgressReporter(stop // u, step // u, cfg.train.log_every, True, console) as rep, watch:
            if path is not None:
                rep.print(f"resumed from {path} at step {step}")
            while step < stop:
                last = loop.step(step // u + 1)
                step = run.step
                last["optimizer_step"] = step
                if oc.kind == "ray":
                    last["actor_restarts"] = run.restarts
                writer.write(last)
                rep.update(step // u, last)
                why = watch.poll(LocalDistContext(), torch.device("cpu"))  # the driver decides alone
                if (every and step % every == 0) or why.checkpoint_due or (why.stop and step < stop):
                    last_ckpt = run.save(out_dir, prompts, cfg.checkpoint.keep_last, extra)
                    watch.checkpointed()
                if why.stop:
                    break
    finally:
        writer.close()
    stopped = why is not None and why.stop and step < stop
    if cfg.checkpoint.save_final and (last_ckpt is None or last_ckpt.name != f"step-{step}"):
        last_ckpt = run.save(out_dir, prompts, cfg.checkpoint.keep_last, extra)
    hf = None
    if cfg.checkpoint.hf_export and not (stopped and why.signal):  # as xt train: a signal skips the export
        hf = out_dir / "hf"
        run.export_hf(hf)
    rows = read_metrics(metrics_path, strict=False)
    plot = plot_curves(rows, out_dir / "reward.png", {"reward_mean": "reward mean", "pass_at_1": "pass@1"},
                       title=f"xt rl: {cfg.task.name}", ylabel="reward") if rows else None
    result = RLResult(step, last, metrics_path, plot, last_ckpt, path, time.perf_counter() - t_start, hf,
                      interrupted=why.signal if stopped else None, out_of_time=stopped and why.out_of_time)
    if stopped:
        cause = result.interrupted or f"train.max_minutes = {cfg.train.max_minutes:g}"
        console.print(f"\n[bold]stopped[/bold] by {cause} after step {step} of {cfg.train.steps}; "
                      f"checkpoint {last_ckpt}", highlight=False)
        console.print(f"  continue with: {escape(resume_command(config, overrides, 'rl'))}", highlight=False)
    _report(console, rows, result, done=not stopped)
    return result



def _report(console: Console, rows: list[dict[str, Any]], r: RLResult, done: bool = True) -> None:
    if rows and done:
        first, end = rows[0], rows[-1]
        def fmt(v: Any) -> str:  # the metric as the step lines print it (3 decimals), or what it is
            return f"{v:.3f}" if isinstance(v, (int, float)) else str(v)

        console.print(f"\n[bold]done[/bold]: RL steps {first['step']}-{end['step']} in {r.wall_s:.0f}s; reward "
                      f"{fmt(first.get('reward_mean'))} (step {first['step']}) -> {fmt(end.get('reward_mean'))} "
                      f"(step {end['step']})", highlight=False)
    console.print(f"  metrics     {r.metrics_path}")
    if r.plot_path:
        console.print(f"  reward plot {r.plot_path}")
    if r.checkpoint:
        console.print(f"  checkpoint  {r.checkpoint}")
    if r.hf_path:
        console.print(f"  HF model    {r.hf_path}")
