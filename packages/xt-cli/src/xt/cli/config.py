"""The top-level config of `xt train`: every package's section composed into one typed struct.

A TOML file maps one-to-one onto :class:`XTConfig`; each table is one section::

    [model]      # ModelSection: the HF config.json fields of the model, or a checkpoint to start from
    [data]       # xt.data.DataConfig
    [train]      # xt.core TrainConfig (steps, micro-batches, dtype, out_dir, ...)
    [optim]      # xt.core OptimConfig (AdamW)
    [schedule]   # xt.core ScheduleConfig (warmup + cosine/linear/constant)
    [checkpoint] # xt.core CheckpointConfig
    [parallel]   # xt.parallel ParallelConfig (fsdp_size, ep_size, sp_size, AC, ...)
    [kernels]    # xt.kernels KernelsConfig (backend per op)
    [sample]     # SampleSection: the greedy sample printed after training

Load with :func:`load_xt_config`; ``--set section.key=value`` overrides any entry.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from xt.core.config import (CheckpointConfig, ConfigStruct, OptimConfig, ScheduleConfig, TrainConfig,
                            load_config, require)
from xt.data import DataConfig
from xt.kernels.config import KernelsConfig
from xt.parallel import ParallelConfig

__all__ = ["ModelSection", "SampleSection", "XTConfig", "load_xt_config"]


class ModelSection(ConfigStruct):
    """Which model to train.

    Exactly one of the three ways must be given:

    Attributes:
        config: the fields of an HF ``config.json`` written inline (``architectures`` or
            ``model_type`` picks the family, e.g. ``architectures = ["Qwen3MoeForCausalLM"]``);
            the model starts from random weights (seeded by ``train.seed``).
        hf_config: path of an HF ``config.json`` (or its folder); random weights.
        init_from: an HF checkpoint folder (``config.json`` + safetensors) to fine-tune from.
        overrides: HF config fields that replace those of `hf_config` / `init_from` (e.g. a
            smaller ``num_hidden_layers`` for a quick run with `hf_config`).
        attn_backend: core attention backend: "auto" (flash varlen on CUDA when available, else
            SDPA), or a backend name the model family accepts.
    """

    config: dict[str, Any] | None = None
    hf_config: str | None = None
    init_from: str | None = None
    overrides: dict[str, Any] = {}
    attn_backend: str = "auto"

    def __post_init__(self) -> None:
        given = [n for n in ("config", "hf_config", "init_from") if getattr(self, n)]
        require(len(given) == 1, "config",
                f"give exactly one of model.config (inline HF fields), model.hf_config (path) or "
                f"model.init_from (HF checkpoint folder); got {given or 'none'}")


class SampleSection(ConfigStruct):
    """A greedy sample from the trained model, printed at the end of `xt train`.

    Attributes:
        prompt: text to continue (pre-training) or the user turn (when `chat` is true).
        chat: wrap `prompt` in the tokenizer's chat template as one user message.
        max_new_tokens: tokens to generate (0 = no sample), >= 0.
    """

    prompt: str = "ROMEO:"
    chat: bool = False
    max_new_tokens: int = 40

    def __post_init__(self) -> None:
        require(self.max_new_tokens >= 0, "max_new_tokens", f"must be >= 0, got {self.max_new_tokens}")


class XTConfig(ConfigStruct):
    """Everything `xt train` needs (module docstring)."""

    model: ModelSection
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    parallel: ParallelConfig = ParallelConfig()
    kernels: KernelsConfig = KernelsConfig()
    sample: SampleSection = SampleSection()


def load_xt_config(path: str | Path | None, overrides: Sequence[str] = ()) -> XTConfig:
    """Read, override and validate a training config.

    Raises:
        xt.core.config.ConfigError: naming the dotted key, the file and line, and what is allowed.
    """
    return load_config(path, XTConfig, overrides)
