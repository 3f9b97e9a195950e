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

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from xt.core.checkpoint import (latest_checkpoint, load_checkpoint, resolve_resume,
                                save_checkpoint, seed_everything)
from xt.core.config import CheckpointConfig, OptimConfig, ScheduleConfig, TrainConfig
from xt.core.distributed import DistContext, LocalDistContext
from xt.core.engine.compute_weights import ComputeWeights
from xt.core.engine.metrics import (MetricsWriter, default_peak_tflops, max_memory_gib, mfu,
                                    read_metrics)
from xt.core.engine.optim import build_optimizer, build_scheduler
from xt.core.engine.precision import resolve_precision
from xt.core.engine.report import ProgressReporter, plot_loss_curve
from xt.core.engine.step import StepStats, forward_backward

__all__ = ["Trainer", "TrainResult"]

_CORE_KEYS = {"step", "loss", "aux_loss", "grad_norm", "lr", "tokens_per_s", "mfu",
              "max_memory_gib", "num_tokens", "loss_tokens", "seq_len", "step_time_s"}


@dataclass
class TrainResult:
    """Outcome of `Trainer.fit`.

    Attributes:
        step: optimizer steps completed.
        metrics: the last step's metrics (empty if no step ran).
        metrics_path, plot_path: ``out_dir/metrics.jsonl`` and ``out_dir/loss.png``.
        checkpoint: the last checkpoint saved or resumed from, or None.
        hf_path: the HF export folder, or None if not exported.
        wall_s: seconds spent in `fit`.
        stopped_early: True when the loader ran out before the configured steps.
    """

    step: int
    metrics: dict[str, Any]
    metrics_path: Path
    plot_path: Path | None
    checkpoint: Path | None
    hf_path: Path | None
    wall_s: float
    stopped_early: bool = False
    resumed_from: Path | None = field(default=None)


class Trainer:
    """Trains any model that follows the XT model contract (see the module docstring).

    Builds AdamW (`build_optimizer`) and the LR schedule (`build_scheduler`) at construction, so a
    checkpoint can be loaded into them. Per optimizer step: draw `micro_batches_per_step`
    micro-batches, `forward_backward` (global-token loss normalisation), clip the gradient norm,
    optimizer step, schedule step, metrics (metrics.jsonl + terminal), periodic checkpoint.

    Args:
        model: the model, already on its device (and wrapped/sharded by xt.parallel if wanted).
        loader: micro-batch loader (module docstring).
        train, optim, schedule, checkpoint: config sections.
        dist: the parallel layout (default `LocalDistContext`, one process).
        export_hf: ``export_hf(model, path)`` writing the final model in HF format; called on
            every rank when `checkpoint.hf_export` is set (it must gather/write on rank 0 itself).
        console: rich console for the progress bar and log lines (default stdout).

    Raises:
        TypeError: if `loader` lacks `state_dict`/`load_state_dict` or the model has no
            parameters.
    """

    def __init__(self, model: nn.Module, loader: Any, train: TrainConfig,
                 optim: OptimConfig = OptimConfig(), schedule: ScheduleConfig = ScheduleConfig(),
                 checkpoint: CheckpointConfig = CheckpointConfig(), *,
                 dist: DistContext | None = None,
                 export_hf: Callable[[nn.Module, Path], None] | None = None,
                 console: Console | None = None) -> None:
        for attr in ("state_dict", "load_state_dict", "__iter__"):
            if not callable(getattr(loader, attr, None)):
                raise TypeError(f"loader {type(loader).__name__} has no {attr}(); the engine "
                                "needs an iterable with state_dict()/load_state_dict() "
                                "(docs/contracts.md, Loader)")
        params = list(model.parameters())
        if not params:
            raise TypeError("model has no parameters")
        self.model, self.loader = model, loader
        self.train_cfg, self.optim_cfg = train, optim
        self.schedule_cfg, self.ckpt_cfg = schedule, checkpoint
        self.dist = dist or LocalDistContext()
        self.export_hf = export_hf
        self.console = console or Console()
        self.device = params[0].device
        self.out_dir = Path(train.out_dir)
        self.precision = resolve_precision(train.dtype, self.device)
        self.autocast_dtype = self.precision.autocast_dtype
        if self.precision.warning and self.dist.is_main:
            self.console.print(f"[yellow]warning[/yellow]: {self.precision.warning}", highlight=False)
        self.compute_weights = self._compute_weights()
        self.peak_tflops = train.peak_tflops or default_peak_tflops(self.device)
        self.optimizer = build_optimizer(model, optim)
        self.scheduler = build_scheduler(self.optimizer, schedule, train.steps)
        self.step = 0

    def _compute_weights(self) -> ComputeWeights | None:
        if self.autocast_dtype is None or self.train_cfg.weight_cast != "per_step":
            return None
        weights = ComputeWeights(self.model, self.autocast_dtype)
        return weights if weights.num_tensors else None

    @property
    def precision_summary(self) -> str:
        """One line for the banner: the resolved precision, why, and how weights are cast."""
        if self.autocast_dtype is None:
            return f"{self.precision.reason} (train.weight_cast not used in fp32)"
        w = self.compute_weights
        if w is None:
            how = ("weights cast on every use (train.weight_cast = 'per_use')"
                   if self.train_cfg.weight_cast == "per_use" else
                   "weights cast on every use: no plain fp32 matrix to copy (FSDP2 casts its own)")
        else:
            how = (f"bf16 copies of {w.num_tensors} weight tensors ({w.num_params / 1e6:.1f}M "
                   "parameters) cast once per step (train.weight_cast = 'per_step')")
        return f"{self.precision.reason}; {how}"

    # -- one step ---------------------------------------------------------------------------
    def forward_backward(self, micro_batches: Sequence[Mapping[str, Any]]) -> StepStats:
        """Forward/backward over `micro_batches`, adding into ``.grad`` (see `forward_backward`)."""
        return forward_backward(self.model, micro_batches, self.dist, self.device,
                                self.autocast_dtype, self.compute_weights)

    def train_step(self, micro_batches: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """One optimizer step on `micro_batches`; returns its metrics (python numbers).

        Metrics: ``step``, ``loss`` (global token-mean CE), ``aux_loss``, ``grad_norm`` (before
        clipping), ``lr`` (used by this step), ``tokens_per_s``, ``mfu`` (None without a peak or
        without ``model.flops_per_token``), ``max_memory_gib``, ``num_tokens``, ``loss_tokens``,
        ``seq_len``, ``step_time_s``, plus the model's ``out.metrics`` (prefixed ``model.`` if a
        name clashes).

        Raises:
            FloatingPointError: if the gradient norm is not finite (the optimizer step is skipped,
                so the weights stay as after the previous step).
        """
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        stats = self.forward_backward(micro_batches)
        max_norm = self.train_cfg.max_grad_norm or math.inf
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = float(self.dist.clip_grad_norm_(params, max_norm))
        if not math.isfinite(grad_norm):
            raise FloatingPointError(
                f"step {self.step + 1}: gradient norm is {grad_norm} (loss {float(stats.loss)}); "
                "optimizer step skipped. Lower optim.lr, check the data, or use train.dtype=fp32")
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        if self.compute_weights is not None:
            self.compute_weights.refresh()
        self.scheduler.step()
        hook_metrics = self._post_optimizer_step()
        self.step += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        return {**self._metrics(stats, grad_norm, lr, dt), **hook_metrics}

    def _post_optimizer_step(self) -> dict[str, Any]:
        """Call the model's optional ``post_optimizer_step(expert_load)`` after each optimizer step.

        Models with a rule that updates state from the step's routing (DeepSeek-V3's
        auxiliary-loss-free balancing bias) expose ``expert_load() -> Tensor`` (local routed-slot
        counts) and ``post_optimizer_step(load) -> dict[str, Tensor]``. The engine sums the load
        over all ranks first, so the rule sees the global batch. Returned tensors are logged.
        """
        hook = getattr(self.model, "post_optimizer_step", None)
        if not callable(hook):
            return {}
        load_fn = getattr(self.model, "expert_load", None)
        load = self.dist.all_reduce_sum(load_fn().detach().clone()) if callable(load_fn) else None
        out = hook(load) or {}
        return {k: (v.detach().cpu().tolist() if torch.is_tensor(v) and v.ndim else float(v))
                for k, v in out.items()}

    def _metrics(self, stats: StepStats, grad_norm: float, lr: float, dt: float) -> dict[str, Any]:
        tokens_per_s = stats.num_tokens / dt if dt > 0 else None
        fpt = getattr(self.model, "flops_per_token", None)
        util = None
        if callable(fpt) and tokens_per_s is not None:
            util = mfu(float(fpt(max(1, round(stats.seq_len)))), tokens_per_s, self.peak_tflops,
                       self.dist.world_size)
        m: dict[str, Any] = {
            "step": self.step, "loss": float(stats.loss),
            "aux_loss": None if stats.aux_loss is None else float(stats.aux_loss),
            "grad_norm": grad_norm, "lr": lr, "tokens_per_s": tokens_per_s, "mfu": util,
            "max_memory_gib": max_memory_gib(self.device), "num_tokens": stats.num_tokens,
            "loss_tokens": stats.loss_tokens, "seq_len": stats.seq_len, "step_time_s": dt,
        }
        for k, v in stats.metrics.items():
            m[f"model.{k}" if k in _CORE_KEYS else k] = v.cpu().tolist() if v.ndim else float(v)
        return m

    # -- checkpoints ------------------------------------------------------------------------
    def save(self) -> Path:
        """Checkpoint the current state (collective; see `save_checkpoint`)."""
        return save_checkpoint(self.out_dir, self.step, self.model, self.optimizer,
                               self.scheduler, self.loader, self.dist, self.ckpt_cfg.keep_last)

    def load(self, path: str | Path) -> int:
        """Restore a checkpoint (model, optimizer, scheduler, loader, RNG); returns its step."""
        self.step = load_checkpoint(path, self.model, self.optimizer, self.scheduler,
                                    self.loader, self.dist)
        if self.compute_weights is not None:
            self.compute_weights.refresh()
        return self.step

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

        Returns:
            `TrainResult` (outputs are under `train.out_dir`).

        Raises:
            FloatingPointError: on a non-finite gradient norm (see `train_step`).
            FileNotFoundError / ValueError: for a bad explicit resume path.
            FileExistsError: on a fresh start in an `out_dir` that already holds checkpoints
                (their steps would mix with this run's under resume="auto").
        """
        t_start = time.perf_counter()
        if self.device.type == "cuda":  # max_memory_gib is this run's peak, not the process's
            torch.cuda.reset_peak_memory_stats(self.device)
        cfg, main = self.train_cfg, self.dist.is_main
        path = resolve_resume(resume if resume is not None else self.ckpt_cfg.resume, self.out_dir)
        if path is not None:
            self.load(path)
        else:
            old = latest_checkpoint(self.out_dir)
            if old is not None:
                raise FileExistsError(
                    f"{self.out_dir} already holds checkpoints (latest {old.name}) from an earlier "
                    "run; resume it with resume='auto' (--resume auto) or use another "
                    "train.out_dir")
            seed_everything(cfg.seed)
        self.model.train()
        metrics_path = self.out_dir / "metrics.jsonl"
        writer = MetricsWriter(metrics_path, self.step if path else None) if main else None
        last_ckpt: Path | None = path
        last: dict[str, Any] = {}
        stop = min(cfg.steps, until_step if until_step is not None else cfg.steps)
        every, early = self.ckpt_cfg.every_steps, False
        it = iter(self.loader)
        try:
            with ProgressReporter(stop, self.step, cfg.log_every, main, self.console) as rep:
                if path is not None:
                    rep.print(f"resumed from {path} at step {self.step}")
                while self.step < stop:
                    mbs = self._draw(it)
                    if mbs is None:
                        early = True
                        rep.print(f"loader exhausted after step {self.step}; stopping")
                        break
                    last = self.train_step(mbs)
                    if writer:
                        writer.write(last)
                    rep.update(self.step, last)
                    if every and self.step % every == 0:
                        last_ckpt = self.save()
        finally:
            if writer:
                writer.close()
        saved_now = last_ckpt is not None and last_ckpt.name == f"step-{self.step}"
        if self.ckpt_cfg.save_final and not saved_now:
            last_ckpt = self.save()
        hf_path = self._export() if self.step >= cfg.steps or early else None
        plot_path = None
        if main and metrics_path.exists():
            plot_path = plot_loss_curve(read_metrics(metrics_path, strict=False),
                                        self.out_dir / "loss.png")
        return TrainResult(step=self.step, metrics=last, metrics_path=metrics_path,
                           plot_path=plot_path, checkpoint=last_ckpt, hf_path=hf_path,
                           wall_s=time.perf_counter() - t_start, stopped_early=early,
                           resumed_from=path)

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
