"""The model-agnostic training engine.

Public API:
    Trainer(model, loader, train, optim, schedule, checkpoint, *, dist, export_hf, console)
        .fit(resume=None, until_step=None) -> TrainResult
        .train_step(micro_batches) -> dict;  .forward_backward(micro_batches) -> StepStats
        .save() -> Path;  .load(path) -> step
    forward_backward(model, micro_batches, dist_ctx, device, autocast_dtype) -> StepStats
    build_optimizer(model, OptimConfig), build_scheduler(opt, ScheduleConfig, total_steps),
    lr_factor(step, total_steps, ScheduleConfig)
    count_label_tokens, micro_batch_objective, IGNORE_INDEX      (loss normalisation)
    MetricsWriter, read_metrics, mfu, effective_seq_len, max_memory_gib, plot_loss_curve
"""
from xt.core.engine.loss import IGNORE_INDEX, count_label_tokens, micro_batch_objective
from xt.core.engine.metrics import (MetricsWriter, default_peak_tflops, effective_seq_len,
                                    max_memory_gib, mfu, read_metrics)
from xt.core.engine.optim import build_optimizer, build_scheduler, lr_factor
from xt.core.engine.report import ProgressReporter, plot_loss_curve
from xt.core.engine.step import StepStats, forward_backward
from xt.core.engine.trainer import Trainer, TrainResult

__all__ = [
    "IGNORE_INDEX", "MetricsWriter", "ProgressReporter", "StepStats", "TrainResult", "Trainer",
    "build_optimizer", "build_scheduler", "count_label_tokens", "default_peak_tflops",
    "effective_seq_len", "forward_backward", "lr_factor", "max_memory_gib", "mfu",
    "micro_batch_objective", "plot_loss_curve", "read_metrics",
]
