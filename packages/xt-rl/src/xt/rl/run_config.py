"""The sections an RL run adds to the model/train/optim ones: ``[rollout]`` (how samples are drawn),
``[task]`` (where the prompts come from) and ``[orchestrator]`` (one process, or Ray actors).

Both are `xt.core.config.ConfigStruct`s, so a TOML file reports a bad value as ``rollout.group_size``
(or ``task.name``) with its file and line. The ``[rl]`` algorithm section is `xt.rl.config.RLConfig`.
"""
from __future__ import annotations

from typing import Any, Literal

import msgspec

from xt.core.config import ConfigStruct, require
from xt.core.config.dtypes import normalize_dtype_field

__all__ = ["RolloutConfig", "TaskConfig", "OrchestratorConfig"]


class RolloutConfig(ConfigStruct):
    """``[rollout]``: the samples of one RL step.

    Attributes:
        prompts_per_step: prompts drawn per step, >= 1.
        group_size: samples per prompt (the GRPO group), >= 1 (>= 2 for a non-zero advantage).
        max_new_tokens: response budget, >= 1 (also ``rl.max_response_tokens`` when that is 0).
        top_p: nucleus sampling mass in (0, 1]; with < 1 the trainer's log-probs are of the
            unfiltered distribution (the rollout's of the nucleus), a measured mismatch.
        routing_replay: the trainer replays the rollout's experts (MoE models;
            `xt.models.common.routing_replay`); the disagreement it removes is logged either way.
        updates_per_step: optimizer steps per rollout batch (the batch split in order); with > 1 the
            trainer's old log-probs are computed before the first update and the PPO clip matters.
        max_batch_sequences: sequences generated together at most (0 = all of the step's).
        seed: seeds the sampling RNG (per step: ``seed + step``).
        dtype: the precision of XT's rollout: "train" (default) runs generation as the trainer's
            forward runs, i.e. ``train.dtype`` resolved for the device (bf16 autocast with the bf16
            compute copies where that is bf16: `Engine.compute_context`; disaggregated rollout
            actors hold compute copies of their own model copy); "fp32" always runs the fp32
            weights without autocast. Engine "xt" only: LMDeploy computes in its own precision,
            so with it only "train" (the default) is accepted. "float32" is accepted and stored
            as "fp32" (`xt.core.config.dtypes`).
        engine: "xt" (XT's KV-cache generation on the policy model) or "lmdeploy" (an LMDeploy
            pipeline on ``model.init_from``, re-exported after each update; extra
            ``xt-rl[lmdeploy]``, one process only, not run by XT's tests:
            `xt.rl.rollout.lmdeploy_engine`).
        cuda_graph: on CUDA, XT's generation replays its decode steps from a CUDA graph where it
            can (models without MoE layers: `xt.models.common.decode_graph`; same tokens as eager);
            false: every step eager. Engine "xt" only.
    """

    # what one step samples
    prompts_per_step: int = 8
    group_size: int = 4
    max_new_tokens: int = 64
    top_p: float = 1.0
    seed: int = 0
    dtype: Literal["train", "fp32", "float32"] = "train"
    # how the trainer uses it
    routing_replay: bool = False
    updates_per_step: int = 1
    # which engine, and how it batches
    engine: Literal["xt", "lmdeploy"] = "xt"
    max_batch_sequences: int = 0
    cuda_graph: bool = True

    def __post_init__(self) -> None:
        require(self.prompts_per_step >= 1, "prompts_per_step", f"must be >= 1, got {self.prompts_per_step}")
        require(self.group_size >= 1, "group_size", f"must be >= 1, got {self.group_size}")
        require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        require(isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1, "top_p",
                f"must be in (0, 1], got {self.top_p!r}")
        normalize_dtype_field(self, "dtype", ("fp32",), words=("train",))
        require(1 <= self.updates_per_step <= self.prompts_per_step * self.group_size, "updates_per_step",
                f"must be in [1, prompts_per_step * group_size = {self.prompts_per_step * self.group_size}], "
                f"got {self.updates_per_step}")
        require(self.engine == "xt" or not self.routing_replay, "routing_replay",
                "needs rollout.engine = 'xt' (LMDeploy does not return the routed experts)")
        require(self.engine == "xt" or self.dtype == "train", "dtype",
                f"{self.dtype!r} needs rollout.engine = 'xt' (LMDeploy computes in its own precision)")
        require(self.engine == "xt" or self.cuda_graph, "cuda_graph",
                "false needs rollout.engine = 'xt' (LMDeploy runs its own decode loop)")
        require(self.max_batch_sequences >= 0, "max_batch_sequences",
                f"must be >= 0 (0 = all at once), got {self.max_batch_sequences}")


class TaskConfig(ConfigStruct):
    """``[task]``: the prompts and reference answers.

    Attributes:
        source: "reasoning_gym" (a generated task, extra ``xt-rl[gym]``) or "jsonl" (a file of
            ``{"question": ..., "answer": ...}`` lines; other fields are passed to the reward).
        name: the reasoning-gym task (e.g. "basic_arithmetic", "countdown").
        path: the JSONL file (source "jsonl").
        size: samples generated (reasoning_gym), >= 1.
        seed: the generator's seed, and the seed of the per-epoch prompt order.
        config: the reasoning-gym task's own fields (e.g. ``max_digits = 1``).
        tokenizer: "qwen3", "llama3", a local tokenizer folder, or "model" (the folder of
            ``model.init_from``).
        chat: render each prompt with the tokenizer's chat template (one user turn, after an
            optional system turn); false: the plain text.
        system_prompt: the system turn ("" = none).
        prompt_template: the user turn, with ``{question}`` replaced by the sample's question.
    """

    source: Literal["reasoning_gym", "jsonl"] = "reasoning_gym"
    name: str = "basic_arithmetic"
    path: str = ""
    size: int = 1000
    seed: int = 0
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    tokenizer: str = "model"
    chat: bool = True
    system_prompt: str = ""
    prompt_template: str = "{question}"

    def __post_init__(self) -> None:
        require(self.size >= 1, "size", f"must be >= 1, got {self.size}")
        require(self.source != "jsonl" or bool(self.path), "path", "must name a JSONL file when source = 'jsonl'")
        require("{question}" in self.prompt_template, "prompt_template",
                f"must contain '{{question}}', got {self.prompt_template!r}")


class OrchestratorConfig(ConfigStruct):
    """``[orchestrator]``: where the parts of the loop run (`xt.rl.cluster` for Ray).

    Attributes:
        kind: "local" (everything in the `xt rl` process) or "ray" (rollout, reward and trainer
            workers as Ray actors; extra ``xt-rl[ray]``). The synchronous results are the same.
        placement: "colocated" (the trainer actors also generate, taking turns with the updates
            on their devices; the weights are handed over in memory: with one trainer rank the
            rollout runs on the trained model itself; with ``trainer_workers = N`` > 1 each rank
            keeps a full unsharded rollout copy on its device, refreshed from the sharded policy
            after each update, and samples a share of the step's prompts split as among N
            rollout workers, so the samples equal a disaggregated run with ``rollout_workers = N``;
            costs a full copy of the weights per rank) or "disaggregated" (rollout actors with
            their own model copy; the trainer's weights reach them in buckets through ``weight_sync``).
        weight_sync: how the trainer's weights reach the rollout actors (disaggregated only), in
            HF-named buckets: "object_store" (through Ray's object store, in memory), "disk"
            (safetensors files under ``train.out_dir/weight_sync``: a shared file system between
            nodes) or "collective" (broadcast from trainer rank 0 over a torch.distributed group
            of it and the rollout actors: gloo on the CPU, NCCL on CUDA; synchronous runs only,
            ``max_staleness = 0``, since the trainer then holds no earlier weights to redo a rollout on).
        trainer_workers: trainer actors, >= 1: ranks of one torch.distributed group running the
            policy laid out by ``[parallel]`` (FSDP2, EP, Ulysses SP with ``parallel.sp_size``
            dividing them) as `xt train` under torchrun, each data-parallel rank training on its
            share of every update's samples; > 1 needs kind = "ray" (colocated:
            each rank also samples its share of the prompts on a rollout copy of its own).
        bucket_mb: the largest weight bucket, MiB (> 0); a tensor above it travels alone.
        rollout_workers: rollout actors (disaggregated), >= 1; 1 with colocated (the trainer ranks
            sample: ``trainer_workers`` of them split the prompts alike). With more than one, each gets a
            contiguous share of the step's prompts and its own seed (``seed * 1009 + worker``), so
            the samples differ from a one-worker run (and stay reproducible).
        reward_workers: reward actors, >= 1, each with a `RewardPool` of ``rl.reward.workers``
            processes; the completions are split between them in order (the rewards do not change).
        address: "" starts Ray inside the `xt rl` process; "auto" or "HOST:PORT" joins a cluster.
        num_cpus: CPUs of the embedded Ray (0 = all of the machine's).
        gpus_per_actor: GPUs of each trainer actor and of each rollout actor; -1 = 1 when CUDA is
            visible, else 0. Colocated runs only the trainer actors, so each rank's trainer and
            rollout share its GPUs.
        max_restarts: how often Ray restarts a dead rollout / reward actor (its work is redone,
            after the rollout gets the current weights); >= 0.
        max_staleness: 0 = synchronous; 1 = one-step off-policy overlap (disaggregated): each
            step's rollout starts during the previous step, on the weights before its update, so
            rollout actors generate while the trainer trains; checkpoints hold the buffered rollout.

    A key changed from its default where it has no effect is an error, never ignored: the Ray keys
    (``placement`` .. ``max_restarts``) under ``kind = "local"``, ``weight_sync`` and ``bucket_mb``
    under colocated placement.
    """

    kind: Literal["local", "ray"] = "local"
    placement: Literal["colocated", "disaggregated"] = "colocated"
    weight_sync: Literal["object_store", "disk", "collective"] = "object_store"
    bucket_mb: float = 256.0
    trainer_workers: int = 1
    rollout_workers: int = 1
    reward_workers: int = 1
    address: str = ""
    num_cpus: int = 0
    gpus_per_actor: float = -1.0
    max_restarts: int = 3
    max_staleness: int = 0

    def __post_init__(self) -> None:
        require(isinstance(self.bucket_mb, (int, float)) and self.bucket_mb > 0, "bucket_mb",
                f"must be > 0 MiB, got {self.bucket_mb!r}")
        require(self.rollout_workers >= 1, "rollout_workers", f"must be >= 1, got {self.rollout_workers}")
        require(self.reward_workers >= 1, "reward_workers", f"must be >= 1, got {self.reward_workers}")
        require(self.num_cpus >= 0, "num_cpus", f"must be >= 0 (0 = all), got {self.num_cpus}")
        require(self.gpus_per_actor == -1 or self.gpus_per_actor >= 0, "gpus_per_actor",
                f"must be -1 (auto) or >= 0, got {self.gpus_per_actor}")
        require(self.trainer_workers >= 1, "trainer_workers", f"must be >= 1, got {self.trainer_workers}")
        require(self.trainer_workers == 1 or self.kind == "ray", "trainer_workers",
                f"{self.trainer_workers} needs kind = 'ray' (the ranks are Ray actors)")
        require(not (self.weight_sync == "collective" and self.max_staleness), "weight_sync",
                "'collective' needs max_staleness = 0 (a redone prefetched rollout needs the earlier weights, "
                "which only 'object_store' / 'disk' keep)")
        require(self.max_restarts >= 0, "max_restarts", f"must be >= 0, got {self.max_restarts}")
        require(self.max_staleness in (0, 1), "max_staleness", f"must be 0 or 1, got {self.max_staleness}")
        require(self.max_staleness == 0 or (self.kind == "ray" and self.placement == "disaggregated"),
                "max_staleness", "1 (overlap) needs kind = 'ray' and placement = 'disaggregated' (separate rollout actors)")
        self._refuse_unused()
        require(self.placement == "disaggregated" or self.rollout_workers == 1, "rollout_workers",
                f"must be 1 with placement = 'colocated' (the trainer actors sample, split over "
                f"trainer_workers = {self.trainer_workers}), got {self.rollout_workers}")

    def _refuse_unused(self) -> None:
        """No setting is silently ignored: a key changed from its default where it has no effect
        (the Ray keys under ``kind = "local"``; the weight-sync keys under colocated placement,
        whose hand-over is in memory) is an error naming it.

        Raises:
            xt.core.errors.ConfigError: naming the first such key.
        """
        defaults = {f.name: f.default for f in msgspec.structs.fields(OrchestratorConfig)}
        ray_only = ("placement", "weight_sync", "bucket_mb", "rollout_workers", "reward_workers", "address",
                    "num_cpus", "gpus_per_actor", "max_restarts")
        unused = ray_only if self.kind == "local" else (
            ("weight_sync", "bucket_mb") if self.placement == "colocated" else ())
        separate = ("weight_sync", "bucket_mb", "rollout_workers")  # keys of separate rollout actors
        for key in unused:
            why = ("has no effect with kind = 'local' (everything runs in the xt rl process); set kind = 'ray'"
                   + (" and placement = 'disaggregated'" if key in separate else "")
                   if self.kind == "local" else
                   "has no effect with placement = 'colocated' (the weights are handed over in memory); "
                   "set placement = 'disaggregated'")
            require(getattr(self, key) == defaults[key], key, f"{why}, got {getattr(self, key)!r}")
