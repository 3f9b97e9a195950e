"""The engine's config sections: optimizer, LR schedule, training loop, checkpoints.

Each is a `ConfigStruct` with defaults; `__post_init__` rejects out-of-range values with a
`ConfigFieldError` naming the field (so a bad TOML value is reported as ``train.steps`` etc.).
The CLI composes these with the model/data sections into one top-level struct, e.g.::

    class XTConfig(ConfigStruct):
        train: TrainConfig = TrainConfig()
        optim: OptimConfig = OptimConfig()
        schedule: ScheduleConfig = ScheduleConfig()
        checkpoint: CheckpointConfig = CheckpointConfig()
"""
from __future__ import annotations

import math
from typing import Literal

from xt.core.config.base import ConfigStruct, require, require_in
from xt.core.config.dtypes import normalize_dtype_field
from xt.core.sizes import parse_size

__all__ = ["OptimConfig", "ScheduleConfig", "TrainConfig", "CheckpointConfig", "TrackingConfig"]


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


class OptimConfig(ConfigStruct):
    """AdamW hyper-parameters (decoupled weight decay; Loshchilov & Hutter 2019, torch.optim.AdamW).

    Attributes:
        lr: peak learning rate (the schedule multiplies it by a factor in [0, 1]); > 0.
        betas: (beta1, beta2), each in [0, 1).
        eps: denominator epsilon, > 0.
        weight_decay: decoupled weight decay, >= 0.
        decay_1d_params: also decay parameters with fewer than 2 dimensions (norm weights,
            biases). False (the usual choice) puts them in a group with weight decay 0.
        impl: AdamW implementation: "fused" (one kernel; CUDA, also CPU on torch >= 2.4),
            "foreach" (multi-tensor), "for_loop" (per parameter), "auto" = fused when all
            parameters are on CUDA, else foreach, or "fused_bf16_refresh": XT's Triton AdamW
            (xt.kernels.optim) that also writes the bf16 compute copies of
            ``train.weight_cast = "per_step"`` and takes the clip factor, in one pass (torch
            formula off CUDA; not for FSDP2 parameters; not yet measured on the H200).
        part_lr: peak learning rates of named parts of the model (each > 0; the schedule scales
            them like `lr`), e.g. ``{vision_tower = 2e-5, projector = 1e-4}`` for a
            vision-language model (its ``xt_param_parts``: ``vision_tower``, ``projector``,
            ``language_model``); parameters of other parts use `lr`. A part the model does not
            have is an error. The logged ``lr`` is that of the parameters outside `part_lr`.
    """

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_1d_params: bool = False
    impl: Literal["auto", "fused", "foreach", "for_loop", "fused_bf16_refresh"] = "auto"
    part_lr: dict[str, float] = {}

    def __post_init__(self) -> None:
        require(_finite(self.lr) and self.lr > 0, "lr", f"must be a number > 0, got {self.lr!r}")
        for name, value in self.part_lr.items():
            require(_finite(value) and value > 0, f"part_lr.{name}", f"must be a number > 0, got {value!r}")
        require(all(_finite(b) and 0 <= b < 1 for b in self.betas), "betas",
                f"must be two numbers in [0, 1), got {list(self.betas)!r}")
        require(_finite(self.eps) and self.eps > 0, "eps", f"must be > 0, got {self.eps!r}")
        require(_finite(self.weight_decay) and self.weight_decay >= 0, "weight_decay",
                f"must be >= 0, got {self.weight_decay!r}")


class ScheduleConfig(ConfigStruct):
    """Learning-rate schedule: linear warmup, then cosine, linear or constant decay.

    The factor multiplying `OptimConfig.lr` at optimizer step s (0-based), with W = warmup_steps,
    N = total steps, r = min_lr_ratio and p = (s - W) / max(1, N - W):

    - s < W: (s + 1) / W (the first step already moves; step W - 1 reaches the peak);
    - decay="cosine": r + (1 - r) * 0.5 * (1 + cos(pi * p));
    - decay="linear": r + (1 - r) * (1 - p);
    - decay="constant": 1.

    Attributes:
        warmup_steps: W, >= 0.
        decay: "cosine" | "linear" | "constant".
        min_lr_ratio: r in [0, 1], the floor of the decay as a fraction of the peak LR.
    """

    warmup_steps: int = 0
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require(_finite(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "min_lr_ratio",
                f"must be in [0, 1], got {self.min_lr_ratio!r}")


class TrainConfig(ConfigStruct):
    """The training loop.

    Attributes:
        steps: optimizer steps to run in total (a resumed run continues up to this), >= 1.
        micro_batches_per_step: micro-batches drawn per optimizer step (gradient accumulation),
            >= 1. The loss is normalised over the label tokens of all of them
            (docs/architecture.md, Loss normalisation).
        max_grad_norm: clip the global gradient L2 norm to this; 0 disables clipping (the norm is
            still measured and logged).
        dtype: "auto" (default) = "bf16" where bf16 is native (CUDA GPUs with bf16, CPUs with
            AVX512_BF16 or AMX) and "fp32" elsewhere (`xt.core.engine.precision`); "fp32"; or
            "bf16" = mixed precision with `torch.autocast(dtype=torch.bfloat16)` around the
            forward pass: parameters, gradients and AdamW state stay fp32 (master weights),
            matmuls run in bf16. Chosen over bf16 parameters because the optimizer update stays
            exact and checkpoints stay fp32. An explicit "bf16" on a CPU that emulates bf16
            (~30-40x slower matmuls) runs, with a warning. "bfloat16" and "float32" are accepted
            and stored as "bf16" and "fp32" (`xt.core.config.dtypes`).
        weight_cast: under bf16, when the fp32 master weights are cast to bf16. "per_step"
            (default): bf16 copies of the matmul weights are made once per optimizer step and
            their gradients are added into the fp32 ``.grad`` as they arrive
            (`xt.core.engine.compute_weights`); the same bf16 values and fp32 accumulation as
            "per_use", with one cast per step instead of one per micro-batch and use. "per_use":
            autocast alone casts every weight in every micro-batch (and its gradient back), the
            previous recipe. Not used under fp32 (the banner says so).
        nonfinite_grad: what an optimizer step does when the global gradient norm is NaN or inf.
            "raise" (default): raise `FloatingPointError` before the optimizer step (the weights
            stay as after the previous step). "skip": drop the step's gradients and go on; the
            weights, the optimizer state and the LR schedule stay untouched, the model's
            post-optimizer hook is not called, and the metric ``skipped_steps`` counts such steps
            (`xt.core.engine.Engine.optim_step`).
        seed: seeds python `random` and torch (CPU and CUDA) at the start of a fresh run.
        log_every: print a metrics line every this many steps (metrics.jsonl gets every step).
        out_dir: run folder: metrics.jsonl, loss.png, checkpoints/, hf/.
        peak_tflops: the accelerator's peak dense TFLOP/s for MFU (per device). None = auto:
            989 (H100/H200 bf16 dense) on CUDA; on CPU no peak is assumed and `mfu` is logged as
            null (set it to your CPU's peak to get an estimate).
        max_minutes: time budget of the training loop in minutes (None = none). When it is spent
            the run stops after the step under way, saves a checkpoint and exports like a
            finished run; `--resume auto` continues it. > 0.
    """

    steps: int = 1000
    micro_batches_per_step: int = 1
    max_grad_norm: float = 1.0
    dtype: Literal["auto", "bf16", "fp32", "bfloat16", "float32"] = "auto"
    weight_cast: Literal["per_step", "per_use"] = "per_step"
    nonfinite_grad: Literal["raise", "skip"] = "raise"
    seed: int = 0
    log_every: int = 10
    out_dir: str = "runs/xt"
    peak_tflops: float | None = None
    max_minutes: float | None = None

    def __post_init__(self) -> None:
        require(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        require(self.micro_batches_per_step >= 1, "micro_batches_per_step",
                f"must be >= 1, got {self.micro_batches_per_step}")
        require(_finite(self.max_grad_norm) and self.max_grad_norm >= 0, "max_grad_norm",
                f"must be >= 0 (0 = no clipping), got {self.max_grad_norm!r}")
        normalize_dtype_field(self, "dtype", ("bf16", "fp32"), words=("auto",))  # also when built in Python
        require_in(self.nonfinite_grad, ("raise", "skip"), "nonfinite_grad")  # also when built in Python
        require(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")
        require(bool(self.out_dir), "out_dir", "must be a non-empty path")
        require(self.peak_tflops is None or (_finite(self.peak_tflops) and self.peak_tflops > 0),
                "peak_tflops", f"must be > 0 or omitted, got {self.peak_tflops!r}")
        require(self.max_minutes is None or (_finite(self.max_minutes) and self.max_minutes > 0),
                "max_minutes", f"must be > 0 or omitted, got {self.max_minutes!r}")


class CheckpointConfig(ConfigStruct):
    """Checkpointing and final export.

    A run never loses more than `every_steps` steps or `every_minutes` minutes of work, whichever
    comes first; SIGINT / SIGTERM also save a checkpoint after the step under way (see
    `xt.core.engine.stop`).

    Attributes:
        every_steps: save every this many optimizer steps; 0 = no step cadence. >= 0.
        every_minutes: save when this many minutes have passed since the last checkpoint (or the
            start), checked after each step; 0 = no time cadence. >= 0. Default 30.
        keep_last: keep only the newest this many checkpoints; 0 = keep all. >= 0.
        save_final: save a checkpoint after the last step.
        hf_export: after the last step, call the Trainer's `export_hf(model, out_dir / "hf")`
            hook (skipped with a note when the caller gave none).
        hf_max_shard_size: the largest safetensors file of the HF export (``xt train``, ``xt rl``
            and ``xt convert`` of a run's checkpoint): bytes, or a string as transformers'
            ``max_shard_size`` takes (``"5GB"``, ``"500MiB"``; `xt.core.sizes.parse_size`).
            A tensor larger than this gets a file of its own. Default ``"5GB"`` (transformers').
        resume: "auto" (newest complete checkpoint in out_dir/checkpoints, or a fresh start when
            there is none), a checkpoint folder path, or None for a fresh start.
    """

    every_steps: int = 0
    every_minutes: float = 30.0
    keep_last: int = 2
    save_final: bool = True
    hf_export: bool = True
    hf_max_shard_size: int | str = "5GB"
    resume: str | None = None

    def __post_init__(self) -> None:
        require(self.every_steps >= 0, "every_steps", f"must be >= 0, got {self.every_steps}")
        require(_finite(self.every_minutes) and self.every_minutes >= 0, "every_minutes",
                f"must be >= 0 (0 = no time cadence), got {self.every_minutes!r}")
        require(self.keep_last >= 0, "keep_last", f"must be >= 0 (0 = keep all), got {self.keep_last}")
        require(self.resume is None or bool(self.resume), "resume",
                "must be 'auto', a checkpoint path, or omitted")
        try:
            parse_size(self.hf_max_shard_size, "hf_max_shard_size")
        except ValueError as err:
            require(False, "hf_max_shard_size", str(err).split(": ", 1)[1])


class TrackingConfig(ConfigStruct):
    """Experiment tracking beside ``metrics.jsonl`` (which is always written). Only the main rank logs.

    Attributes:
        tensorboard: write TensorBoard event files to ``out_dir/tensorboard`` (torch's
            `SummaryWriter`; needs the ``tensorboard`` package, extra ``xt-core[tensorboard]``).
            Every numeric metric of a step is a scalar at that step; on resume the events after the
            checkpoint's step are purged.
        wandb: Weights & Biases: "off" (default), "offline" (a local run under ``out_dir/wandb``,
            no network; ``wandb sync`` uploads it later) or "online". Needs the ``wandb`` package
            (extra ``xt-core[wandb]``).
        project: the W&B project name.
        run_name: the run's name in TensorBoard and W&B; None = the name of ``train.out_dir``.
    """

    tensorboard: bool = False
    wandb: Literal["off", "offline", "online"] = "off"
    project: str = "xt"
    run_name: str | None = None

    def __post_init__(self) -> None:
        require_in(self.wandb, ("off", "offline", "online"), "wandb")
        require(bool(self.project), "project", "must be a non-empty name")
