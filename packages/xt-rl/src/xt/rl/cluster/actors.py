"""The Ray actors of an RL run, as plain classes (`xt.rl.cluster.driver` wraps them with
``ray.remote``; tests may also call them directly).

Every request and answer crosses the actor boundary as msgpack bytes of the loop's msgspec messages
(`xt.rl.rollout.protocol`, `xt.rl.loop.messages`), so a message is validated against its type on
arrival. Weights travel as buckets (`xt.rl.cluster.weights`).

- `TrainerActor`: the policy exactly as `xt rl` builds it on one process (`xt.rl.loop.build`:
  seed, meta build + ``[parallel]`` layout, `Engine.from_config`, `PolicyTrainer`), its checkpoints
  and HF export. With ``orchestrator.trainer_workers = N`` there are N of them, ranks of one
  torch.distributed group (the environment torchrun would set: ``RANK``, ``WORLD_SIZE``,
  ``MASTER_ADDR`` ...; gloo on the CPU, NCCL on CUDA), laid out by ``[parallel]`` as `xt train`
  under torchrun; the driver calls every rank alike and reads rank 0's answer.
  Colocated, it also holds a rollout engine and the two take turns on its devices: with one rank
  on the trained model itself (the hand-over is a version bump); with several, each rank on a full
  unsharded copy of its own (`xt.rl.cluster.rollout_copy`: the sharded policy cannot generate
  alone), refreshed in memory from the policy's gathered full state after each update, and each
  rank samples its share of the step's prompts.
- `RolloutActor`: a model copy built the same way and an `XTRolloutEngine` on it (disaggregated).
- `RewardActor`: a `RewardPool` (worker processes with per-call timeouts).
"""
from __future__ import annotations

import functools

import os
from pathlib import Path
from typing import Any

import torch

from xt.core.checkpoint import seed_everything
from xt.models import save_pretrained
from xt.parallel.config import ParallelConfig
from xt.parallel.export import exporter
from xt.parallel.full_state import FullState
from xt.models.hf_stream import PlainState
from xt.rl.cluster.collective import BucketPlan, WeightGroup, broadcast_weights, bucket_plan, receive_weights
from xt.rl.cluster.rollout_copy import build_rollout_copy, refresh_copy
from xt.rl.cluster.weights import WeightHandle, load_buckets, publish_weights
from xt.rl.loop.build import StateHolder, build_laid_out, build_policy, load_policy, save_policy
from xt.rl.loop.grpo import RewardWorker
from xt.rl.loop.local import describe_policy, policy_rollout
from xt.rl.loop.messages import RewardRequest, TrainRequest
from xt.rl.rewards import RewardPool
from xt.rl.rollout import XTRolloutEngine
from xt.rl.rollout.precision import copy_precision
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
        colocated: also hold a rollout engine: on the trained model itself when it is not laid out
            over ranks, else on a full rollout copy of this rank's (`xt.rl.cluster.rollout_copy`)
            computing in ``rollout.dtype`` as a disaggregated rollout actor does.
        threads: torch intra-op threads (the driver's, so the numerics equal a one-process run).
        rank, world: this trainer rank and the number of trainer actors.
        master: ``"HOST:PORT"`` where rank 0 hosts the trainer group's rendezvous (``world > 1``).

    Raises:
        ValueError: ``world > 1`` without `master`.
    """

    def __init__(self, cfg: Any, colocated: bool, threads: int, rank: int = 0, world: int = 1,
                 master: str | None = None) -> None:
        torch.set_num_threads(threads)
        if world > 1:  # what torchrun sets: xt.parallel.apply_layout then lays the model out over the group
            if not master:
                raise ValueError("TrainerActor: several trainer ranks need the rendezvous address (master)")
            host, _, port = master.rpartition(":")
            os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                              MASTER_ADDR=host, MASTER_PORT=port)
        self.rank, self.world = rank, world
        self.wgroup: WeightGroup | None = None
        self.cfg, self.device = cfg, actor_device()
        if world > 1:
            _join_trainer_group(master, rank, world, self.device)
        self.parts = build_policy(cfg, self.device)
        self.rollout = None
        self.copy: torch.nn.Module | None = None  # the colocated rollout copy of a laid-out policy
        if colocated and self.full_state() is None:
            self.rollout = policy_rollout(self.parts, cfg.rollout)
        elif colocated:
            self.copy = build_rollout_copy(cfg.model, self.device)
            self.rollout = XTRolloutEngine(self.copy, max_batch_sequences=cfg.rollout.max_batch_sequences,
                                           precision=copy_precision(self.copy, cfg.train, cfg.rollout.dtype,
                                                                    self.device), cuda_graph=cfg.rollout.cuda_graph)
        self.parts.state.rollout = self.rollout

    def info(self) -> dict[str, Any]:
        """`xt.rl.loop.local.describe_policy`, plus ``is_moe``, ``routing_replay`` and ``step``."""
        tr = self.parts.trainer
        return {**describe_policy(self.parts, self.device, getattr(self.cfg, "parallel", None), self.rollout),
                "is_moe": tr.is_moe,
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
        """Colocated rollout: ``RolloutRequest`` bytes -> ``RolloutResult`` bytes, on this rank's
        rollout engine alone (not collective: each rank samples its own share).

        Raises:
            RuntimeError: the actor is not colocated.
        """
        if self.rollout is None:
            raise RuntimeError("TrainerActor.generate: this trainer is not colocated with a rollout engine")
        return encode(self.rollout.generate(decode(data, RolloutRequest)))

    def set_rollout_version(self, version: int) -> int:
        """Colocated hand-over of the current weights as `version`, in memory; returns the bytes
        copied. On the trained model itself only the version moves (0 bytes); a rollout copy is
        refreshed from the policy's full state (`xt.rl.cluster.rollout_copy.refresh_copy`, gathered
        on this device), collective: every trainer rank must be called."""
        if self.rollout is None:
            return 0
        n = 0
        if self.copy is not None:
            n = refresh_copy(self.copy, self.full_state(self.device))
        self.rollout.load_weights(None, version)
        return n

    def rollout_state_dict(self) -> dict[str, torch.Tensor] | None:
        """CPU copies of this rank's rollout copy's tensors (for checks); None without a copy."""
        if self.copy is None:
            return None
        return {k: v.detach().to("cpu", copy=True) for k, v in self.copy.state_dict().items()}

    def full_state(self, device: torch.device | str = "cpu") -> Any:
        """The policy's full state for weight sync: None (its plain state dict) for a plain model, a
        `FullState` on `device` (gathered one tensor at a time; every rank must iterate it) for a
        laid-out one."""
        meshes = getattr(self.parts.dist, "meshes", None)
        return None if meshes is None else FullState(self.parts.model, getattr(meshes, "ep_group", None), device)

    def weight_plan(self, max_bytes: int) -> BucketPlan:
        """The HF buckets of a weight sync (`xt.rl.cluster.collective.bucket_plan`; nothing gathered)."""
        state = self.full_state() or PlainState(self.parts.model)
        return bucket_plan(self.parts.model, max_bytes, state.layout)

    def join_weight_group(self, address: str, prefix: str, world: int) -> None:
        """Rank 0: become rank 0 of the weight-sync group `prefix` of `world` members (the rollout
        actors join it at the same time); other ranks: nothing."""
        if self.rank == 0:
            self.wgroup = WeightGroup(address, prefix, 0, world, self.device)

    def broadcast_weights(self, max_bytes: int, plan: BucketPlan) -> int:
        """Stream the current weights and broadcast them (rank 0) to the weight-sync group
        (`xt.rl.cluster.collective.broadcast_weights`); every trainer rank must be called. Returns
        the bytes sent.

        Raises:
            RuntimeError: rank 0 is not in a weight-sync group (`join_weight_group`).
        """
        if self.rank == 0 and self.wgroup is None:
            raise RuntimeError("TrainerActor.broadcast_weights: join_weight_group first")
        try:
            return broadcast_weights(self.wgroup if self.rank == 0 else None, self.parts.model, max_bytes, plan,
                                     self.full_state())
        except RuntimeError:
            if self.rank == 0 and self.wgroup is not None and self.wgroup.pg is None:  # closed: a receiver died
                self.wgroup = None
            raise

    def publish_weights(self, how: str, max_bytes: int, root: str | None) -> WeightHandle | None:
        """The current weights as HF-named buckets (`xt.rl.cluster.weights.publish_weights`). A
        laid-out trainer gathers on every rank (all must be called); rank 0 publishes and returns
        the handle, the others None."""
        tensors = self.full_state()
        if self.rank != 0:
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
        """Write the policy as an HF folder (`xt.models.save_pretrained`, files of at most
        ``checkpoint.hf_max_shard_size``; streamed from every rank of a laid-out trainer through
        `xt.parallel.exporter`)."""
        write = functools.partial(save_pretrained, max_shard_size=self.cfg.checkpoint.hf_max_shard_size)
        exporter(write, self.parts.dist)(self.parts.model, Path(path))

    def close(self) -> None:
        """Remove the routing-replay hook."""
        self.parts.trainer.close()


def _join_trainer_group(master: str, rank: int, world: int, device: torch.device) -> None:
    """Initialise the default process group (gloo on the CPU, NCCL on CUDA) as `rank` of `world`
    through the driver-hosted TCP store at `master` (``"HOST:PORT"``), before `build_policy`
    (whose `xt.parallel.apply_layout` then uses it). A store the driver bound to a port of its own
    choosing (port 0) replaces torchrun's env rendezvous, where rank 0 would bind a port picked
    earlier: another socket can take that one in between (EADDRINUSE, seen in CI)."""
    import datetime

    import torch.distributed as tdist
    if tdist.is_initialized():
        return
    host, _, port = master.rpartition(":")
    store = tdist.TCPStore(host, int(port), is_master=False, timeout=datetime.timedelta(seconds=600))
    tdist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank, world_size=world)


class RolloutActor:
    """A rollout worker with its own model copy (module docstring). Its weights are the trainer's
    after the first `load_weights`; until then they are the same seeded initialisation. It computes
    in ``rollout.dtype`` (`xt.rl.rollout.precision.copy_precision`): with "train" resolving to bf16,
    under autocast with bf16 compute copies of its own fp32 copy, re-cast after each weight load.

    Args:
        cfg: the `xt rl` config (``model``, ``train.seed`` / ``dtype`` / ``weight_cast``, ``kernels``,
            ``rollout``).
        threads: torch intra-op threads.
    """

    def __init__(self, cfg: Any, threads: int) -> None:
        torch.set_num_threads(threads)
        seed_everything(cfg.train.seed)
        device = actor_device()
        model, _ = build_laid_out(cfg.model, cfg.kernels, ParallelConfig(), device)  # plain, unsharded
        model.requires_grad_(False)
        self.engine = XTRolloutEngine(model, max_batch_sequences=cfg.rollout.max_batch_sequences,
                                      precision=copy_precision(model, cfg.train, cfg.rollout.dtype, device),
                                      cuda_graph=cfg.rollout.cuda_graph)
        self.wgroup: WeightGroup | None = None

    def join_weight_group(self, address: str, prefix: str, rank: int, world: int) -> None:
        """Become `rank` of the weight-sync group `prefix` (replacing any earlier group)."""
        self.wgroup = WeightGroup(address, prefix, rank, world, actor_device())

    def receive_weights(self, plan: BucketPlan, version: int) -> int:
        """Receive the trainer's broadcast buckets of `plan` into the model and set the version;
        returns the bytes received (`xt.rl.cluster.collective.receive_weights`).

        Raises:
            RuntimeError: not in a weight-sync group.
        """
        if self.wgroup is None:
            raise RuntimeError("RolloutActor.receive_weights: join_weight_group first")
        try:
            n = receive_weights(self.wgroup, self.engine.model, plan)
        except RuntimeError:  # the sender or another member left mid-broadcast: rejoin a new group later
            self.wgroup.close()
            self.wgroup = None
            raise
        self.engine.weight_version = version
        return n

    def state_dict(self) -> dict[str, torch.Tensor]:
        """CPU copies of the rollout model's tensors (for checks)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.engine.model.state_dict().items()}

    def ping(self) -> int:
        """The weight version held (also: the actor is alive)."""
        return self.engine.weight_version

    def precision(self) -> str:
        """The banner line of the precision it generates in (`RolloutPrecision.summary`)."""
        return self.engine.precision.summary

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
