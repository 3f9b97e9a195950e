"""The top-level config of `xt train`: every package's section composed into one typed struct.

A TOML file maps one-to-one onto :class:`XTConfig`; each table is one section::

    [model]      # xt.models ModelSection: the HF config.json fields of the model, or a checkpoint to start from
    [data]       # xt.data.DataConfig
    [train]      # xt.core TrainConfig (steps, micro-batches, dtype, out_dir, ...)
    [optim]      # xt.core OptimConfig (AdamW)
    [schedule]   # xt.core ScheduleConfig (warmup + cosine/linear/constant)
    [checkpoint] # xt.core CheckpointConfig
    [parallel]   # xt.parallel ParallelConfig (fsdp_size, ep_size, sp_size, AC, ...)
    [kernels]    # xt.kernels KernelsConfig (backend per op)
    [tracking]   # xt.core TrackingConfig (TensorBoard, W&B)
    [eval]       # xt.data EvalConfig: held-out loss every N steps (files or a split of the documents)
    [sample]     # SampleSection: the greedy sample printed after training

Load with :func:`load_xt_config`; ``--set section.key=value`` overrides any entry.

Every section but ``[sample]`` belongs to the package that reads it, and the functions that build a
run from them take sections, not this struct (docs/architecture.md, Where a run is assembled), so
another composer (an RL driver) can nest the same sections in a config of its own.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from xt.core.config import (CheckpointConfig, ConfigStruct, OptimConfig, ScheduleConfig, TrackingConfig,
                            TrainConfig, load_config, require)
from xt.data import DataConfig, EvalConfig
from xt.kernels.config import KernelsConfig
from xt.models import ModelSection
from xt.parallel import ParallelConfig

__all__ = ["RunSections", "SampleSection", "XTConfig", "load_xt_config"]


class SampleSection(ConfigStruct):
    """A greedy sample from the trained model, printed at the end of `xt train`.

    Attributes:
        prompt: text to continue (pre-training) or the user turn (when `chat` is true).
        chat: wrap `prompt` in the tokenizer's chat template as one user message.
        max_new_tokens: tokens to generate (0 = no sample), >= 0.
        image: for a vision-language model (``[data.vision]``), an image the user turn shows: a
            local file or ``CORPUS:N`` (record N's image of a built-in image corpus, e.g.
            ``"digits_vqa:7"``); tiled as the training data is, its place in `prompt` marked by
            ``data.vision.placeholder`` (else it goes first). Needs `chat`. "" = text only.
    """

    prompt: str = "ROMEO:"
    chat: bool = False
    max_new_tokens: int = 40
    image: str = ""

    def __post_init__(self) -> None:
        require(self.max_new_tokens >= 0, "max_new_tokens", f"must be >= 0, got {self.max_new_tokens}")
        require(not self.image or self.chat, "image", "needs chat = true (the image is shown in the user turn)")


class RunSections(ConfigStruct):
    """The sections every run command shares: ``[model]``, ``[train]``, ``[optim]``, ``[schedule]``,
    ``[checkpoint]`` and ``[kernels]`` (`xt train`'s `XTConfig` and `xt rl`'s config add theirs)."""

    model: ModelSection
    train: TrainConfig = TrainConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    kernels: KernelsConfig = KernelsConfig()


class XTConfig(RunSections):
    """Everything `xt train` needs (module docstring)."""

    data: DataConfig = DataConfig()
    parallel: ParallelConfig = ParallelConfig()
    tracking: TrackingConfig = TrackingConfig()
    eval: EvalConfig = EvalConfig()
    sample: SampleSection = SampleSection()


def load_xt_config(path: str | Path | None, overrides: Sequence[str] = ()) -> XTConfig:
    """Read, override and validate a training config.

    Raises:
        xt.core.config.ConfigError: naming the dotted key, the file and line, and what is allowed.
    """
    return load_config(path, XTConfig, overrides)
