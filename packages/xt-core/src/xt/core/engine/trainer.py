"""The model-agnostic training loop: `Trainer`.

Model contract (docs/contracts.md): ``out = model(**micro_batch)`` with ``out.loss_sum`` (fp32
scalar, summed CE over labels != -100), ``out.aux_loss`` (fp32 scalar or None), optional
``out.metrics`` (dict of tensors, logged averaged), optional ``model.flops_per_token(seq_len)``.

Loader contract: an iterable of micro-batches (dicts of tensors: ``input_ids``, ``labels``
pre-shifted with -100 for no loss, ``position_ids``, ``cu_seqlens``, optional ``max_seqlen``),
with ``state_dict()`` / ``load_state_dict(state)`` such that a loader restored from the state taken
after batch n yields batch n+1 next. `iter(loader)` is called once per `fit` after any restore.
When it is exhausted the run stops early (an incomplete last step is dropped).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from xt.core.checkpoint import (Stateful, latest_checkpoint, load_checkpoint, read_saved_extra_state,
                                resolve_resume, save_checkpoint, saved_world_size, seed_everything)
from xt.core.checkpoint.extra import check_extra_state
from xt.core.checkpoint.layout import saved_extra_state_names
from xt.core.config import CheckpointConfig, OptimConfig, ScheduleConfig, TrackingConfig, TrainConfig
from xt.core.distributed import DistContext
from xt.core.engine.engine import Engine
from xt.core.engine.evaluate import evaluate_loss
from xt.core.engine.metrics import MetricsWriter, default_peak_tflops, read_metrics, step_metrics
from xt.core.engine.report import ProgressReporter, plot_loss_curve
from xt.core.engine.result import TrainResult
from xt.core.engine.resume import (RUN_SETTINGS, RunSettings, apply_fresh_hyperparameters, changed_settings,
                                   refuse_changes, resume_report, snapshot_hyperparameters)
from xt.core.engine.step import StepStats
from xt.core.engine.stop import StopDecision, StopWatch
from xt.core.engine.tracking import Trackers

__all__ = ["Trainer", "TrainResult", "ENGINE_STATE"]

#: the name under which `Trainer` checkpoints its `Engine` (step counters + LR schedule)
ENGINE_STATE = "engine"


def _from_engine(name: str, doc: str) -> property:
    """A read-only Trainer attribute that is the engine's attribute `name`."""
    return property(lambda self: getattr(self.engine, name), doc=doc)


class Trainer:
    """Trains any model that follows the XT model contract (see the module docstring).

    The step itself is an `Engine` (``self.engine``: AdamW, the LR schedule, precision, compute
    weights), built at construction so a checkpoint can be loaded into it. The Trainer is the
    loop: per optimizer step it draws `micro_batches_per_step` micro-batches, runs
    ``engine.forward_backward`` (global-token loss normalisation) and ``engine.optim_step`` (clip,
    AdamW, schedule, model hook), writes metrics (metrics.jsonl + terminal), saves periodic
    checkpoints and exports at the end.

    Args:
        model: the model, already on its device (and wrapped/sharded by xt.parallel if wanted).
        loader: micro-batch loader (module docstring).
        train, optim, schedule, checkpoint: config sections.
        dist: the parallel layout (default `LocalDistContext`, one process).
        export_hf: ``export_hf(model, path)`` writing the final model in HF format; called on
            every rank when `checkpoint.hf_export` is set (it must gather/write on rank 0 itself).
        console: rich console for the progress bar and log lines (default stdout).
        eval_batches, eval_every: held-out micro-batches of this rank (iterated once per
            evaluation; the same count on every rank) and the cadence in steps (0 = none); the
            step's record then gets ``eval_loss``, ``eval_ppl`` and ``eval_tokens``
            (`xt.core.engine.evaluate.evaluate_loss`), also after the last step.
        tracking: TensorBoard / W&B beside metrics.jsonl (`xt.core.engine.tracking`), main rank
            only; `run_config` (a dict, e.g. the resolved config) is recorded by W&B.
        extra_state: named `Stateful` objects (``state_dict()`` / ``load_state_dict()``) saved
            with every checkpoint and restored on resume (`xt.core.checkpoint.extra`); the name
            ``"engine"`` is the Trainer's own.

    Raises:
        TypeError: if `loader` lacks `state_dict`/`load_state_dict`, the model has no
            parameters, or an `extra_state` entry is not a Stateful.
        ValueError: if `extra_state` uses the name ``"engine"`` or ``"settings"``, or `eval_every`
            is set without `eval_batches`.
    """

    def __init__(self, model: nn.Module, loader: Any, train: TrainConfig,
                 optim: OptimConfig = OptimConfig(), schedule: ScheduleConfig = ScheduleConfig(),
                 checkpoint: CheckpointConfig = CheckpointConfig(), *,
                 dist: DistContext | None = None,
                 export_hf: Callable[[nn.Module, Path], None] | None = None,
                 console: Console | None = None,
                 extra_state: Mapping[str, Stateful] | None = None,
                 eval_batches: Iterable[Mapping[str, Any]] | None = None, eval_every: int = 0,
                 tracking: TrackingConfig = TrackingConfig(), run_config: Mapping[str, Any] | None = None) -> None:
        for attr in ("state_dict", "load_state_dict", "__iter__"):
            if not callable(getattr(loader, attr, None)):
                raise TypeError(f"loader {type(loader).__name__} has no {attr}(); the engine "
                                "needs an iterable with state_dict()/load_state_dict() "
                                "(docs/contracts.md, Loader)")
        extra = check_extra_state(extra_state)
        for own in (ENGINE_STATE, RUN_SETTINGS):
            if own in extra:
                raise ValueError(f"Trainer: extra_state name {own!r} is the Trainer's own "
                                 "(its Engine and its config sections); pick another name")
        self.engine = Engine.from_config(model, train, optim, schedule, dist=dist)
        self.settings = RunSettings(train=train, optim=optim, schedule=schedule)
        self.resume_changes: list[tuple[str, Any, Any]] | None = None
        self.model, self.loader, self.extra_state = model, loader, extra
        self.train_cfg, self.optim_cfg = train, optim
        self.schedule_cfg, self.ckpt_cfg = schedule, checkpoint
        self.dist = self.engine.dist
        self.export_hf = export_hf
        if eval_every and eval_batches is None:
            raise ValueError("Trainer: eval_every > 0 needs eval_batches")
        self.eval_batches, self.eval_every = eval_batches, eval_every
        self.tracking, self.run_config = tracking, run_config
        self.console = console or Console()
        self.device = self.engine.device
        self.out_dir = Path(train.out_dir)
        if self.precision.warning and self.dist.is_main:
            self.console.print(f"[yellow]warning[/yellow]: {self.precision.warning}", highlight=False)
        self.peak_tflops = train.peak_tflops or default_peak_tflops(self.device)

    # -- the engine's parts, for callers that reach them through the Trainer ---------------------
    optimizer = _from_engine("optimizer", "The AdamW optimizer (`Engine.optimizer`).")
    scheduler = _from_engine("scheduler", "The LR scheduler (`Engine.scheduler`).")
    precision = _from_engine("precision", "The resolved `Precision` (`Engine.precision`).")
    autocast_dtype = _from_engine("autocast_dtype", "torch.bfloat16 under bf16, else None.")
    compute_weights = _from_engine("compute_weights", "The bf16 `ComputeWeights`, or None.")
    precision_summary = _from_engine("precision_summary", "One line for the banner.")
    step = _from_engine("step", "Optimizer steps completed (`Engine.step`: applied and skipped).")

    # -- one step ---------------------------------------------------------------------------
    def forward_backward(self, micro_batches: Sequence[Mapping[str, Any]]) -> StepStats:
        """Forward/backward over `micro_batches`, adding into ``.grad`` (`Engine.forward_backward`)."""
        return self.engine.forward_backward(micro_batches)

    def train_step(self, micro_batches: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """One optimizer step on `micro_batches`; returns its metrics (python numbers).

        Metrics: ``step``, ``loss`` (global token-mean CE), ``aux_loss``, ``grad_norm`` (before
        clipping), ``lr`` (used by this step), ``tokens_per_s``, ``mfu`` (None without a peak or
        without ``model.flops_per_token``), ``max_memory_gib``, ``num_tokens``, ``loss_tokens``,
        ``seq_len``, ``step_time_s``, ``skipped_steps`` (steps so far whose update was skipped for
        a non-finite gradient norm, ``train.nonfinite_grad = "skip"``), plus the model's
        ``out.metrics`` (prefixed ``model.`` if a name clashes) and what its post-optimizer hook
        returned.

        Raises:
            FloatingPointError: if the gradient norm is not finite and ``train.nonfinite_grad`` is
                "raise" (the optimizer step is skipped, so the weights stay as after the previous
                step).
        """
        t0 = time.perf_counter()
        self.engine.zero_grad()
        stats = self.engine.forward_backward(micro_batches)
        opt = self.engine.optim_step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        return {**self._metrics(stats, opt.grad_norm, opt.lr, dt), **opt.metrics}

    def _metrics(self, stats: StepStats, grad_norm: float, lr: float, dt: float) -> dict[str, Any]:
        return step_metrics(self.model, stats, grad_norm=grad_norm, lr=lr, dt=dt, step=self.step,
                            skipped_steps=self.engine.skipped_steps, device=self.device,
                            peak_tflops=self.peak_tflops, world_size=self.dist.world_size)

    # -- checkpoints ------------------------------------------------------------------------
    def _checkpointed_state(self, names: list[str] | None = None) -> dict[str, Stateful]:
        """What a checkpoint holds by name; for a load, `names` (the checkpoint's) drops the
        run settings from checkpoints written before they were saved."""
        state = {ENGINE_STATE: self.engine, RUN_SETTINGS: self.settings, **self.extra_state}
        if names is not None and RUN_SETTINGS not in names:
            del state[RUN_SETTINGS]
        return state

    def save(self) -> Path:
        """Checkpoint the current state (collective; see `save_checkpoint`): model and optimizer
        (DCP), loader and RNG per rank, the engine (step counters, LR schedule) and the
        `extra_state` objects as named extra states."""
        return save_checkpoint(self.out_dir, self.step, self.model, self.optimizer, None,
                               self.loader, self.dist, self.ckpt_cfg.keep_last,
                               extra_state=self._checkpointed_state())

    def load(self, path: str | Path) -> int:
        """Restore a checkpoint (model, optimizer, engine and LR schedule, loader, extra states,
        RNG); returns its step.

        The current ``[optim]`` hyper-parameters, ``[schedule]`` and ``train.steps`` apply from
        the next step; what changed since the checkpoint is kept in ``resume_changes`` (None for a
        checkpoint that does not record its settings), see `xt.core.engine.resume`.

        Raises:
            xt.core.errors.CheckpointError: see `load_checkpoint`, e.g. the checkpoint lacks one
                of this Trainer's named extra states, or a changed setting that cannot apply
                (``optim.decay_1d_params``). A checkpoint written before the engine
                state existed (no ``engine`` entry) loads its step and LR schedule from
                ``trainer.pt`` instead.
        """
        names = saved_extra_state_names(path)
        if names is not None and ENGINE_STATE not in names:
            # written before the Engine existed: step and LR schedule sit in trainer.pt
            step = load_checkpoint(path, self.model, self.optimizer, self.engine.scheduler, self.loader,
                                   self.dist, extra_state=self.extra_state)
            sched = self.engine.scheduler
            self.engine.load_state_dict({"step": step, "skipped_steps": 0,
                                         "scheduler": None if sched is None else sched.state_dict()})
            return step
        self.resume_changes = None
        if names is not None and RUN_SETTINGS in names:
            self.resume_changes = changed_settings(read_saved_extra_state(path, RUN_SETTINGS), self.settings.current)
            refuse_changes(self.resume_changes, path)
        fresh = snapshot_hyperparameters(self.optimizer, self.engine.scheduler)
        step = load_checkpoint(path, self.model, self.optimizer, None, self.loader, self.dist,
                               extra_state=self._checkpointed_state(names))  # the engine re-casts its copies
        apply_fresh_hyperparameters(self.optimizer, self.engine.scheduler, fresh)
        return step

    # -- the run ----------------------------------------------------------------------------
    def _draw(self, it: Any) -> list[dict[str, Any]] | None:
        mbs = []
        for _ in range(self.train_cfg.micro_batches_per_step):
            try:
                mbs.append(next(it))
            except StopIteration:
                return None
        return mbs

    def fit(self, resume: str | Path | None = None, until_step: int | None = None) -> TrainResult:
        """Train up to `train.steps` optimizer steps (or `until_step`, to stop a run early).

        Args:
            resume: "auto", a checkpoint folder, or None; None falls back to `checkpoint.resume`.
                A fresh start seeds everything with `train.seed` first; a resume restores the
                checkpoint's RNG, loader, optimizer and schedule state instead, so N steps +
                resume + M steps equal N + M steps in one go.
            until_step: stop after this step (the LR schedule still spans `train.steps`).

        On the main thread, the first SIGINT or SIGTERM lets the step under way finish, saves a
        checkpoint and returns with ``interrupted`` set (a second one raises `KeyboardInterrupt`
        at once); ``train.max_minutes`` stops the same way but also exports; a checkpoint is
        saved every ``checkpoint.every_steps`` steps and ``checkpoint.every_minutes`` minutes
        (`xt.core.engine.stop`).

        Returns:
            `TrainResult` (outputs are under `train.out_dir`).

        Raises:
            FloatingPointError: on a non-finite gradient norm under ``train.nonfinite_grad =
                "raise"`` (see `train_step`).
            xt.core.errors.CheckpointError: a resume checkpoint that does not fit (see `load`).
            FileNotFoundError / ValueError: for a bad explicit resume path.
            FileExistsError: on a fresh start in an `out_dir` that already holds checkpoints
                (their steps would mix with this run's under resume="auto").
        """
        t_start = time.perf_counter()
        if self.device.type == "cuda":  # max_memory_gib is this run's peak, not the process's
            torch.cuda.reset_peak_memory_stats(self.device)
        cfg, main = self.train_cfg, self.dist.is_main
        asked = resume if resume is not None else self.ckpt_cfg.resume
        path = self._start(asked)
        self.model.train()
        metrics_path = self.out_dir / "metrics.jsonl"
        writer = MetricsWriter(metrics_path, self.step if path else None) if main else None
        enabled = self.tracking.tensorboard or self.tracking.wandb != "off"
        trackers = Trackers(self.tracking, self.out_dir, self.step, self.run_config) if main and enabled else None
        last_ckpt: Path | None = path
        last: dict[str, Any] = {}
        stop = min(cfg.steps, until_step if until_step is not None else cfg.steps)
        every, early, why = self.ckpt_cfg.every_steps, False, StopDecision()
        it = iter(self.loader)
        watch = StopWatch(cfg.max_minutes, self.ckpt_cfg.every_minutes)
        try:
            with watch, ProgressReporter(stop, self.step, cfg.log_every, main, self.console) as rep:
                if path is not None:
                    for line in resume_report(path, self.step, saved_world_size(path), self.dist.world_size,
                                              self.resume_changes):
                        rep.print(line)
                elif asked == "auto":
                    rep.print(f"resume auto: no complete checkpoint in {self.out_dir / 'checkpoints'}; "
                              "starting a fresh run at step 1")
                while self.step < stop:
                    mbs = self._draw(it)
                    if mbs is None:
                        early = True
                        rep.print(f"loader exhausted after step {self.step}; stopping")
                        break
                    last = self.train_step(mbs)
                    if self.eval_every and (self.step % self.eval_every == 0 or self.step == cfg.steps):
                        last.update(evaluate_loss(self.engine, self.eval_batches))
                    if writer:
                        writer.write(last)
                    if trackers:
                        trackers.log(last)
                    rep.update(self.step, last)
                    why = watch.poll(self.dist, self.device)
                    if why.stop:
                        rep.print(f"{why.signal or 'train.max_minutes'}: stopping after step {self.step}")
                        break
                    if (every and self.step % every == 0) or why.checkpoint_due:
                        last_ckpt = self.save()
                        watch.checkpointed()
                saved_now = last_ckpt is not None and last_ckpt.name == f"step-{self.step}"
                if (self.ckpt_cfg.save_final or why.stop) and not saved_now:
                    last_ckpt = self.save()  # still under the handlers: a first signal cannot cut it
        finally:
            if writer:
                writer.close()
            if trackers:
                trackers.close()
        done = self.step >= cfg.steps or early or why.out_of_time
        hf_path = self._export() if done and why.signal is None else None
        plot_path = None
        if main and metrics_path.exists():
            plot_path = plot_loss_curve(read_metrics(metrics_path, strict=False),
                                        self.out_dir / "loss.png")
        return TrainResult(step=self.step, metrics=last, metrics_path=metrics_path,
                           plot_path=plot_path, checkpoint=last_ckpt, hf_path=hf_path,
                           wall_s=time.perf_counter() - t_start, stopped_early=early,
                           resumed_from=path, interrupted=why.signal, out_of_time=why.out_of_time)

    def _start(self, resume: str | Path | None) -> Path | None:
        """Load the checkpoint `resume` names, or seed a fresh run; returns the checkpoint or None."""
        path = resolve_resume(resume, self.out_dir)
        if path is not None:
            self.load(path)
            return path
        old = latest_checkpoint(self.out_dir)
        if old is not None:
            raise FileExistsError(
                f"{self.out_dir} already holds checkpoints (latest {old.name}) from an earlier "
                "run; resume it with resume='auto' (--resume auto) or use another "
                "train.out_dir")
        seed_everything(self.train_cfg.seed)
        return None

    def _export(self) -> Path | None:
        if not self.ckpt_cfg.hf_export:
            return None
        if self.export_hf is None:
            if self.dist.is_main:
                self.console.print("checkpoint.hf_export is set but no export_hf hook was given; "
                                   "skipping the HF export", highlight=False, markup=False)
            return None
        path = self.out_dir / "hf"
        self.export_hf(self.model, path)
        self.dist.barrier()
        return path
