"""The trainer side of a Ray run: ``orchestrator.trainer_workers`` `TrainerActor`s forming one
torch.distributed group, called alike, and the `PolicyTrainer` interface over them.

Rank r gets the environment torchrun would give it (``RANK = r``, ``WORLD_SIZE = N``,
``MASTER_ADDR:MASTER_PORT``), and the group is initialised through a TCP store the driver serves
(`host_store`: a port bound by the OS, so no other socket can take it first), so
`xt.parallel.apply_layout` lays the policy out by ``[parallel]`` exactly as `xt train` does under
torchrun (gloo on the CPU, NCCL on CUDA). Every call goes to every rank (their forwards, gathers
and checkpoints are collective); the answer is rank 0's. Each rank receives the whole
`TrainRequest` and trains on its share (`xt.rl.loop.trainer.PolicyTrainer`).
"""
from __future__ import annotations

from typing import Any

from xt.rl.cluster.actors import TrainerActor
from xt.rl.loop.messages import TrainRequest, TrainResult
from xt.rl.rollout.protocol import decode, encode

__all__ = ["TrainerGroup", "TrainerProxy", "host_store"]


def host_store(ray: Any) -> tuple[Any, str]:
    """A TCP store served by this process (the driver) on a port the OS picks while binding it, and
    its ``"HOST:PORT"``; the trainer ranks rendezvous through it (keep the store alive)."""
    import datetime

    import torch.distributed as tdist
    host = ray.util.get_node_ip_address()
    store = tdist.TCPStore(host, 0, is_master=True, wait_for_workers=False, timeout=datetime.timedelta(seconds=600))
    return store, f"{host}:{store.port}"


class TrainerGroup:
    """N trainer actors (module docstring); never restarted (resume from a checkpoint instead).

    Args:
        ray: the module; cfg: the `xt rl` config; colocated: every rank also samples (its share,
            on the trained model at N = 1, else on a rollout copy of its own: `TrainerActor`);
        threads: torch threads per actor; gpus: GPUs per actor; workers: N.
    """

    def __init__(self, ray: Any, cfg: Any, colocated: bool, threads: int, gpus: float, workers: int) -> None:
        self.ray = ray
        self._store, master = host_store(ray) if workers > 1 else (None, None)
        here = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
            node_id=ray.get_runtime_context().get_node_id(), soft=False)
        self.handles = []
        for r in range(workers):
            opts: dict[str, Any] = dict(num_cpus=1, num_gpus=gpus, max_restarts=0)
            if r == 0 and workers > 1:
                opts["scheduling_strategy"] = here  # rank 0 listens on MASTER_ADDR, this node
            self.handles.append(ray.remote(TrainerActor).options(**opts).remote(cfg, colocated, threads, r, workers,
                                                                               master))

    @property
    def rank0(self) -> Any:
        """The rank-0 actor (it answers, writes rank-0 files, and sends the weights)."""
        return self.handles[0]

    def submit(self, method: str, *args: Any) -> list[Any]:
        """``method(*args)`` on every rank; the object refs, rank 0's first."""
        return [getattr(h, method).remote(*args) for h in self.handles]

    def call(self, method: str, *args: Any) -> Any:
        """``method(*args)`` on every rank, waited for; rank 0's answer."""
        return self.ray.get(self.submit(method, *args))[0]


class TrainerProxy:
    """`PolicyTrainer`'s interface (``train``, ``sequence_kl``, ``is_moe``, ``routing_replay``,
    ``weight_version``) over the trainer group."""

    def __init__(self, group: TrainerGroup, info: dict[str, Any]) -> None:
        self.group = group
        self.is_moe, self.routing_replay = bool(info["is_moe"]), bool(info["routing_replay"])
        self.weight_version = 0

    def train(self, request: TrainRequest) -> TrainResult:
        """One RL step's updates on the trainer ranks."""
        res = decode(self.group.call("train", encode(request)), TrainResult)
        self.weight_version = res.weight_version
        return res

    def sequence_kl(self, request: TrainRequest) -> list[float]:
        """Per-sample KL to the reference (``rl.kl_in = "reward"``)."""
        return self.group.call("sequence_kl", encode(request))
