"""The model-agnostic training engine.

Public API:
    Engine(model, optimizer, scheduler=None, *, dist, precision, weight_cast, max_grad_norm,
           nonfinite_grad);  Engine.from_config(model, train, optim, schedule, *, dist)
        .forward_backward(micro_batches, loss=None) -> StepStats   (adds into .grad)
        .forward(micro_batches, *, training=None) -> [model output]  (no grad, same precision)
        .compute_context() -> context manager   (the forward's autocast + compute weights)
        .optim_step() -> OptimStats;  .zero_grad();  .state_dict() / .load_state_dict(state)
    Loss: loss(out, batch, LossContext) -> Tensor | (Tensor, metrics); TokenMeanLoss (default)
    Trainer(model, loader, train, optim, schedule, checkpoint, *, dist, export_hf, console,
            extra_state)
        .fit(resume=None, until_step=None) -> TrainResult
        .train_step(micro_batches) -> dict;  .forward_backward(micro_batches) -> StepStats
        .save() -> Path;  .load(path) -> step;  .engine
    forward_backward(model, micro_batches, dist_ctx, device, autocast_dtype, weights, loss) -> StepStats
    compute_region(device, autocast_dtype, weights)   (the same precision without an Engine)
    build_optimizer(model, OptimConfig), build_scheduler(opt, ScheduleConfig, total_steps),
    lr_factor(step, total_steps, ScheduleConfig)
    count_label_tokens, micro_batch_objective, IGNORE_INDEX      (loss normalisation)
    MetricsWriter, read_metrics, mfu, effective_seq_len, max_memory_gib, plot_loss_curve
"""
from xt.core.engine.engine import Engine, OptimStats
from xt.core.engine.loss import IGNORE_INDEX, count_label_tokens, micro_batch_objective
from xt.core.engine.metrics import (MetricsWriter, default_peak_tflops, effective_seq_len,
                                    max_memory_gib, mfu, read_metrics)
from xt.core.engine.objective import Loss, LossContext, LossOutput, TokenMeanLoss
from xt.core.engine.optim import build_optimizer, build_scheduler, lr_factor
from xt.core.engine.report import ProgressReporter, plot_loss_curve
from xt.core.engine.step import StepStats, compute_region, forward_backward
from xt.core.engine.trainer import Trainer, TrainResult

__all__ = [
    "Engine", "IGNORE_INDEX", "Loss", "LossContext", "LossOutput", "MetricsWriter", "OptimStats",
    "ProgressReporter", "StepStats", "TokenMeanLoss", "TrainResult", "Trainer",
    "build_optimizer", "build_scheduler", "compute_region", "count_label_tokens", "default_peak_tflops",
    "effective_seq_len", "forward_backward", "lr_factor", "max_memory_gib", "mfu",
    "micro_batch_objective", "plot_loss_curve", "read_metrics",
]
