"""The Ray actors of an RL run, as plain classes (`xt.rl.cluster.driver` wraps them with
``ray.remote``; tests may also call them directly).

Every request and answer crosses the actor boundary as msgpack bytes of the loop's msgspec messages
(`xt.rl.rollout.protocol`, `xt.rl.loop.messages`), so a message is validated against its type on
arrival. Weights travel as buckets (`xt.rl.cluster.weights`).

- `TrainerActor`: the policy exactly as `xt rl` builds it on one process (`xt.rl.loop.build`:
  seed, `build_run_model`, `Engine.from_config`, `PolicyTrainer`), its checkpoints and HF export.
  Colocated, it also holds the rollout engine on the same model: the two take turns on its
  devices and the weight hand-over is a version bump.
- `RolloutActor`: a model copy built the same way and an `XTRolloutEngine` on it (disaggregated).
- `RewardActor`: a `RewardPool` (worker processes with per-call timeouts).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from xt.core.checkpoint import seed_everything
from xt.models import save_pretrained
from xt.parallel.config import ParallelConfig
from xt.parallel.export import exporter
from xt.parallel.full_state import FullState
from xt.rl.cluster.weights import WeightHandle, load_buckets, publish_weights
from xt.rl.loop.build import StateHolder, build_laid_out, build_policy, load_policy, save_policy
from xt.rl.loop.grpo import RewardWorker
from xt.rl.loop.local import describe_policy
from xt.rl.loop.messages import RewardRequest, TrainRequest
from xt.rl.rewards import RewardPool
from xt.rl.rollout import XTRolloutEngine
from xt.rl.rollout.protocol import RolloutRequest, decode, encode

__all__ = ["TrainerActor", "RolloutActor", "RewardActor", "actor_device"]


def actor_device() -> torch.device:
    """The actor's device: its first visible CUDA device (Ray sets ``CUDA_VISIBLE_DEVICES`` from
    the GPUs it gave the actor), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TrainerActor:
    """The trainer worker (module docstring).

    Args:
        cfg: the `xt rl` config (its sections are read; it is not modified).
        colocated: also hold the rollout engine on the trained model.
        threads: torch intra-op threads (the driver's, so the numerics equal a one-process run).
    """

    def __init__(self, cfg: Any, colocated: bool, threads: int) -> None:
        torch.set_num_threads(threads)
        self.cfg, self.device = cfg, actor_device()
        self.parts = build_policy(cfg, self.device)
        self.rollout = None
        if colocated:
            self.rollout = XTRolloutEngine(self.parts.model, max_batch_sequences=cfg.rollout.max_batch_sequences)
            self.parts.state.rollout = self.rollout

    def info(self) -> dict[str, Any]:
        """`xt.rl.loop.local.describe_policy`, plus ``is_moe``, ``routing_replay`` and ``step``."""
        tr = self.parts.trainer
        return {**describe_policy(self.parts, self.device), "is_moe": tr.is_moe,
                "routing_replay": tr.routing_replay, "step": self.parts.engine.step}

    def step(self) -> int:
        """Optimizer steps done."""
        return self.parts.engine.step

    def train(self, data: bytes) -> bytes:
        """``TrainRequest`` bytes -> ``TrainResult`` bytes (`PolicyTrainer.train`)."""
        return encode(self.parts.trainer.train(decode(data, TrainRequest)))

    def sequence_kl(self, data: bytes) -> list[float]:
        """``TrainRequest`` bytes -> each sample's summed KL to the reference (`PolicyTrainer.sequence_kl`)."""
        return self.parts.trainer.sequence_kl(decode(data, TrainRequest))

    def generate(self, data: bytes) -> bytes:
        """Colocated rollout: ``RolloutRequest`` bytes -> ``RolloutResult`` bytes.

        Raises:
            RuntimeError: the actor is not colocated.
        """
        if self.rollout is None:
            raise RuntimeError("TrainerActor.generate: this trainer is not colocated with a rollout engine")
        return encode(self.rollout.generate(decode(data, RolloutRequest)))

    def set_rollout_version(self, version: int) -> None:
        """Colocated hand-over: the rollout engine samples from the trained model itself; only the
        version moves."""
        if self.rollout is not None:
            self.rollout.load_weights(None, version)

    def full_state(self) -> Any:
        """The policy's full state for weight sync: None (its plain state dict) for a plain model, a
        `FullState` (gathered one tensor at a time; every rank must iterate it) for a laid-out one."""
        meshes = getattr(self.parts.dist, "meshes", None)
        return None if meshes is None else FullState(self.parts.model, getattr(meshes, "ep_group", None))

    def publish_weights(self, how: str, max_bytes: int, root: str | None) -> WeightHandle | None:
        """The current weights as HF-named buckets (`xt.rl.cluster.weights.publish_weights`). A
        laid-out trainer gathers on every rank (all must be called); rank 0 publishes and returns
        the handle, the others None."""
        tensors = self.full_state()
        if getattr(self.parts.dist, "rank", 0) != 0:
            for _ in tensors:  # take part in the gathers
                pass
            return None
        return publish_weights(self.parts.model, self.parts.trainer.weight_version, how, max_bytes,
                               Path(root) if root else None, tensors)

    def save(self, out_dir: str, prompt_state: dict[str, Any], keep_last: int,
             extra: dict[str, dict[str, Any]] | None = None) -> str:
        """Checkpoint (`xt.rl.loop.build.save_policy`) with the driver's prompt position and named
        extra states (the loop's buffered rollout); returns the folder."""
        holders = {k: StateHolder(v) for k, v in (extra or {}).items()}
        return str(save_policy(self.parts, Path(out_dir), StateHolder(prompt_state), keep_last, holders))

    def load(self, path: str, extra_names: list[str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Resume from a checkpoint; returns the prompt position and the named extra states the
        driver restores."""
        holder = StateHolder()
        holders = {k: StateHolder() for k in extra_names or []}
        load_policy(self.parts, Path(path), holder, holders)
        return holder.state_dict(), {k: h.state_dict() for k, h in holders.items()}

    def export_hf(self, path: str) -> None:
        """Write the policy as an HF folder (streamed from every rank of a laid-out trainer:
        `xt.parallel.exporter`)."""
        exporter(save_pretrained, self.parts.dist)(self.parts.model, Path(path))

    def close(self) -> None:
        """Remove the routing-replay hook."""
        self.parts.trainer.close()


class RolloutActor:
    """A rollout worker with its own model copy (module docstring). Its weights are the trainer's
    after the first `load_weights`; until then they are the same seeded initialisation.

    Args:
        cfg: the `xt rl` config (``model``, ``train.seed``, ``kernels``, ``rollout``).
        threads: torch intra-op threads.
    """

    def __init__(self, cfg: Any, threads: int) -> None:
        torch.set_num_threads(threads)
        seed_everything(cfg.train.seed)
        model, _ = build_laid_out(cfg.model, cfg.kernels, ParallelConfig(), actor_device())  # plain, unsharded
        self.engine = XTRolloutEngine(model.requires_grad_(False),
                                      max_batch_sequences=cfg.rollout.max_batch_sequences)

    def ping(self) -> int:
        """The weight version held (also: the actor is alive)."""
        return self.engine.weight_version

    def load_weights(self, handle: WeightHandle, version: int) -> int:
        """Copy the published buckets in and set the version; returns the bytes read."""
        n = load_buckets(self.engine.model, handle)
        self.engine.weight_version = version
        return n

    def generate(self, data: bytes) -> bytes:
        """``RolloutRequest`` bytes -> ``RolloutResult`` bytes (`XTRolloutEngine.generate`)."""
        return encode(self.engine.generate(decode(data, RolloutRequest)))


class RewardActor:
    """A reward worker: a `RewardPool` of ``reward.workers`` processes (per-call timeouts).

    Args:
        reward: the ``[rl.reward]`` section.
    """

    def __init__(self, reward: Any) -> None:
        self.pool = RewardPool.from_config(reward)
        self.worker = RewardWorker(self.pool)

    def ping(self) -> int:
        """0 (the actor is alive)."""
        return 0

    def score(self, data: bytes) -> bytes:
        """``RewardRequest`` bytes -> ``RewardResult`` bytes."""
        return encode(self.worker.score(decode(data, RewardRequest)))

    def close(self) -> None:
        """Stop the pool's processes."""
        self.pool.close()
