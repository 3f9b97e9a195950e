"""The top-level config of `xt rl`: the RL sections next to the model and training ones.

One TOML file, one table per section::

    [model]      # xt.models ModelSection: HF config fields, hf_config, or init_from a checkpoint
    [task]       # xt.rl TaskConfig: the prompts (reasoning-gym task or JSONL) and their rendering
    [rollout]    # xt.rl RolloutConfig: prompts per step, group size, response budget, top-p, replay
    [rl]         # xt.rl RLConfig: advantage, policy loss, KL, mismatch, overlong, [rl.reward]
    [orchestrator] # xt.rl OrchestratorConfig: one process, or Ray actors (colocated / disaggregated)
    [train]      # xt.core TrainConfig: steps (optimizer steps), micro-batches, dtype, seed, out_dir
    [optim]      # xt.core OptimConfig (AdamW)
    [schedule]   # xt.core ScheduleConfig
    [checkpoint] # xt.core CheckpointConfig (every_steps, keep_last, save_final, resume, hf_export)
    [kernels]    # xt.kernels KernelsConfig
    [parallel]   # xt.parallel ParallelConfig: the trainer's layout (FSDP2 / EP / Ulysses SP over orchestrator.trainer_workers)

Load with :func:`load_rl_config`; ``--set section.key=value`` overrides any entry. Every error names
the dotted key, the file and the line (`xt.core.config.load_config`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from xt.cli.config import RunSections
from xt.core.config import load_config, require
from xt.parallel.config import ParallelConfig
from xt.rl.config import RLConfig
from xt.rl.run_config import OrchestratorConfig, RolloutConfig, TaskConfig

__all__ = ["RLRunConfig", "load_rl_config"]


class RLRunConfig(RunSections):
    """Everything `xt rl` needs (module docstring): the shared run sections plus ``[task]``,
    ``[rollout]``, ``[rl]`` and ``[orchestrator]``."""

    task: TaskConfig = TaskConfig()
    rollout: RolloutConfig = RolloutConfig()
    rl: RLConfig = RLConfig()
    orchestrator: OrchestratorConfig = OrchestratorConfig()
    parallel: ParallelConfig = ParallelConfig()

    def __post_init__(self) -> None:
        u = self.rollout.updates_per_step
        require(self.train.steps % u == 0, "train.steps",
                f"must be a multiple of rollout.updates_per_step = {u} (each RL step makes that many "
                f"optimizer steps), got {self.train.steps}")
        require(self.checkpoint.every_steps % u == 0, "checkpoint.every_steps",
                f"must be a multiple of rollout.updates_per_step = {u} (checkpoints fall between RL steps)")
        per_update = self.rollout.prompts_per_step * self.rollout.group_size // u
        require(self.train.micro_batches_per_step <= per_update, "train.micro_batches_per_step",
                f"must be <= the samples of one update ({per_update}), got {self.train.micro_batches_per_step}")
        ranks, sp = self.orchestrator.trainer_workers, self.parallel.sp_size
        require(sp == 1 or (ranks > 1 and ranks % sp == 0), "parallel.sp_size",
                f"{sp} splits each sequence over that many trainer ranks: it must divide "
                f"orchestrator.trainer_workers ({ranks}), which must then be > 1 (kind = 'ray'; colocated or "
                "disaggregated)")
        data_ranks = ranks // sp  # the ranks of one SP group train on the same samples
        require(data_ranks * self.train.micro_batches_per_step <= per_update, "orchestrator.trainer_workers",
                f"{ranks} ranks (/ parallel.sp_size = {sp}) x train.micro_batches_per_step = "
                f"{self.train.micro_batches_per_step} exceed the samples of one update ({per_update}): every "
                "data-parallel rank needs a sample per micro-batch")
        require(not (self.orchestrator.max_staleness and self.rl.dynamic_sampling), "orchestrator.max_staleness",
                "1 (overlap) cannot be combined with rl.dynamic_sampling (its extra rounds need the current weights)")
        if self.rollout.engine == "lmdeploy":
            require(bool(self.model.init_from), "rollout.engine",
                    "'lmdeploy' starts from an HF folder: set model.init_from")
            require(self.orchestrator.kind == "local", "rollout.engine",
                    "'lmdeploy' runs with orchestrator.kind = 'local' only")
            require(self.rollout.max_batch_sequences == 0, "rollout.max_batch_sequences",
                    "is XT's engine's; LMDeploy batches on its own (leave it 0)")
        require(self.rl.max_response_tokens == 0 or self.rl.max_response_tokens >= self.rollout.max_new_tokens,
                "rl.max_response_tokens", f"must be 0 (= rollout.max_new_tokens) or >= rollout.max_new_tokens "
                f"({self.rollout.max_new_tokens}), got {self.rl.max_response_tokens}")


def load_rl_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RLRunConfig:
    """Read, override and validate an RL run config.

    Raises:
        xt.core.config.ConfigError: naming the dotted key, the file and line, and what is allowed.
    """
    return load_config(path, RLRunConfig, overrides)
