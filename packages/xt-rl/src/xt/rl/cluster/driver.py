"""The Ray orchestration of `xt rl` (``orchestrator.kind = "ray"``): actors, and the proxies the
synchronous loop (`xt.rl.loop.grpo.GRPOLoop`) drives in place of the one-process parts.

`RayRun` starts Ray embedded (``ray.init`` in this process; ``orchestrator.address`` joins a cluster
instead), creates the actors (`xt.rl.cluster.actors`) and exposes the interface of
`xt.rl.loop.local.LocalRun`: ``rollout``, ``reward``, ``trainer``, ``step``, ``load``, ``save``,
``export_hf``, ``describe``, ``close``.

**Placement.** The trainer is ``orchestrator.trainer_workers`` `TrainerActor` ranks of one
torch.distributed group (`xt.rl.cluster.trainer_group`; FSDP2 / EP by ``[parallel]``). Colocated:
the trainer ranks also generate, taking turns with the updates on their devices, and the weights
are handed over in memory. One rank holds the policy and the rollout engine on the same model (the
hand-over is a version bump). N ranks: the policy is sharded, so each rank keeps a full unsharded
rollout copy (`xt.rl.cluster.rollout_copy`), refreshed after each update from the gathered full
state (one tensor at a time, on its device; collective over the ranks), and samples a contiguous
share of the step's prompts seeded ``seed * 1009 + k`` (`ColocatedRollout`), the split of N
disaggregated rollout workers, so the samples equal such a run's; the cost is a full copy of the
weights per rank (docs/architecture.md). Disaggregated:
``orchestrator.rollout_workers`` `RolloutActor` copies; after each update the trainer streams its
weights in HF-named buckets, published (`xt.rl.cluster.weights`: object store or disk) and copied in
by every rollout actor, or broadcast over a process group of trainer rank 0 and the rollout actors
(``weight_sync = "collective"``, `xt.rl.cluster.collective`), before the next rollout.

**Overlap** (``orchestrator.max_staleness = 1``, disaggregated): the loop `submit`s the next
step's rollout before this step's update and `collect`s it a step later, so the rollout actors
generate while the trainer trains (samples one RL step stale); the buffered rollout is part of
the checkpoint (the loop's state), so a resumed run trains on the same samples.

**Fault tolerance.** Rollout and reward actors are created with ``max_restarts =
orchestrator.max_restarts``. When a call fails because its actor died (`ray.exceptions.RayActorError`),
the proxy waits until Ray has restarted it, hands a rollout actor the current weights again, and
sends the same request (same seed) once more, so the step's result does not change; ``restarts``
counts these. A rollout actor that died and came back between the weight sync and a request
answers with the wrong weight version: that answer is dropped and redone the same way. With
collective weight sync a restarted rollout actor has left the weight-sync group, so a new group is
built with every member and the current weights broadcast again. The trainer actors are not
restarted (their optimizer state lives only there: resume from the last checkpoint instead); so
a colocated rollout, which runs on them, is not redone either: the run stops with the error.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch

from xt.rl.cluster.actors import RewardActor, RolloutActor
from xt.rl.cluster.rollout_proxy import ColocatedRollout, DisaggregatedRollout, split_counts
from xt.rl.cluster.trainer_group import TrainerGroup, TrainerProxy
from xt.rl.loop.messages import RewardRequest, RewardResult
from xt.rl.rollout.protocol import decode, encode

__all__ = ["RayRun", "import_ray", "split_counts", "RESTART_WAIT_S", "AFTER_SUBMIT"]

#: how long a proxy waits for Ray to bring a dead actor back
RESTART_WAIT_S = 120.0
#: the fault-injection seam of the tests: when set, ``AFTER_SUBMIT(method, handle, index)`` runs right
#: after each rollout / reward call is submitted to actor ``handle`` (e.g. ``ray.kill`` it mid-call)
AFTER_SUBMIT: Callable[[str, Any, int], None] | None = None


def import_ray() -> Any:
    """The `ray` module.

    Raises:
        xt.core.errors.ConfigError: Ray is not installed (naming ``orchestrator.kind`` and the extra).
    """
    try:
        import ray
    except ImportError:
        from xt.core.errors import ConfigError
        raise ConfigError("orchestrator.kind = 'ray' needs Ray: pip install 'xt-rl[ray]' (or pip install ray)",
                          key="orchestrator.kind") from None
    return ray


class _Actors:
    """Calls to a group of restartable actors with redo-after-restart (module docstring).

    Args:
        ray: the module; handles: the actors; max_restarts: Ray's restarts per actor (a call is
            redone at most this many times); on_restart: ``i -> None``, prepares restarted actor i.
    """

    def __init__(self, ray: Any, handles: list[Any], max_restarts: int,
                 on_restart: Callable[[int], None] | None = None) -> None:
        self.ray, self.handles, self.max_restarts, self.on_restart = ray, handles, max_restarts, on_restart
        self.restarts = 0

    def wait_alive(self, i: int) -> None:
        """Block until actor i answers a ping (Ray restarts a dead one), at most ``RESTART_WAIT_S``.

        Raises:
            ray.exceptions.RayActorError: it is still dead after ``RESTART_WAIT_S``.
        """
        deadline = time.monotonic() + RESTART_WAIT_S
        while True:
            try:
                self.ray.get(self.handles[i].ping.remote(), timeout=RESTART_WAIT_S)
                return
            except self.ray.exceptions.RayActorError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def redo(self, i: int, method: str, args: tuple) -> Any:
        """Wait for actor i to be back, prepare it, and ask ``method(*args)`` again (and again while
        it keeps dying, up to ``max_restarts`` times). Counts each redo in ``restarts``.

        Raises:
            ray.exceptions.RayActorError: the actor died more often than Ray restarts it.
        """
        for attempt in range(self.max_restarts + 1):
            self.restarts += 1
            self.wait_alive(i)
            if self.on_restart is not None:
                self.on_restart(i)
            try:
                return self.ray.get(getattr(self.handles[i], method).remote(*args))
            except self.ray.exceptions.RayActorError:
                if attempt == self.max_restarts:
                    raise

    def submit(self, method: str, args: list[tuple]) -> list[Any]:
        """Submit ``handles[i].method(*args[i])`` for each i; returns the object refs."""
        refs = []
        for i, a in enumerate(args):
            refs.append(getattr(self.handles[i], method).remote(*a))
            if AFTER_SUBMIT is not None:
                AFTER_SUBMIT(method, self.handles[i], i)
        return refs

    def gather(self, method: str, args: list[tuple], refs: list[Any]) -> list[Any]:
        """The answers of `submit`'s refs; a call whose actor died is redone (`redo`)."""
        out = []
        for i, ref in enumerate(refs):
            try:
                out.append(self.ray.get(ref))
            except self.ray.exceptions.RayActorError:
                out.append(self.redo(i, method, args[i]))
        return out

    def call_all(self, method: str, args: list[tuple]) -> list[Any]:
        """``handles[i].method(*args[i])`` for each i, in parallel; a call whose actor died is redone
        (`redo`)."""
        return self.gather(method, args, self.submit(method, args))


class _RewardProxy:
    """`RewardWorker`'s ``score`` over the reward actors (completions split in order)."""

    def __init__(self, ray: Any, handles: list[Any], max_restarts: int) -> None:
        self.actors = _Actors(ray, handles, max_restarts)

    def score(self, request: RewardRequest) -> RewardResult:
        """Rewards of all completions, in order; counts summed; wall time."""
        t0 = time.perf_counter()
        parts = split_counts(len(request.completions), len(self.actors.handles))
        reqs = [RewardRequest(completions=request.completions[a:b], samples=request.samples[a:b]) for a, b in parts]
        outs = [decode(b, RewardResult) for b in self.actors.call_all("score", [(encode(r),) for r in reqs])]
        counts: dict[str, int] = {}
        for o in outs:
            for k, v in o.counts.items():
                counts[k] = counts.get(k, 0) + v
        return RewardResult(rewards=[r for o in outs for r in o.rewards], counts=counts,
                            seconds=time.perf_counter() - t0)


class RayRun:
    """Ray actors for an `xt rl` config (module docstring).

    Args:
        cfg: the `xt rl` config (``[orchestrator]`` and the run sections).
        out_dir: the run folder (the disk weight-sync folder lives under it).

    Raises:
        xt.core.errors.ConfigError: Ray is not installed, it cannot start / join the cluster
            (naming ``orchestrator.address``), or the cluster has fewer GPUs than the actors ask for
            (``orchestrator.gpus_per_actor``).
    """

    def __init__(self, cfg: Any, out_dir: Path) -> None:
        ray = self.ray = import_ray()
        oc = cfg.orchestrator
        self._own_ray = not ray.is_initialized()
        if self._own_ray:
            try:
                ray.init(address=oc.address or None, num_cpus=(oc.num_cpus or None) if not oc.address else None,
                         include_dashboard=False, log_to_driver=True)
            except (ConnectionError, RuntimeError, ValueError) as e:
                from xt.core.errors import ConfigError
                what = f"cannot join the Ray cluster at {oc.address!r}" if oc.address else "cannot start Ray"
                raise ConfigError(f"orchestrator.address: {what}: {e}", key="orchestrator.address") from None
        gpus = oc.gpus_per_actor if oc.gpus_per_actor >= 0 else (1.0 if torch.cuda.is_available() else 0.0)
        threads = torch.get_num_threads()
        colocated = oc.placement == "colocated"
        need = gpus * (oc.trainer_workers if colocated else oc.trainer_workers + oc.rollout_workers)
        have = float(ray.cluster_resources().get("GPU", 0.0))
        if need > have:  # Ray would wait for them forever
            from xt.core.errors import ConfigError
            raise ConfigError(f"orchestrator.gpus_per_actor = {oc.gpus_per_actor}: the actors need {need:g} GPUs "
                              f"({oc.placement}), the Ray cluster has {have:g}; lower it (fractions share a GPU) "
                              "or use fewer rollout_workers", key="orchestrator.gpus_per_actor")
        # the synchronous loop runs one part at a time, so only the trainer ranks reserve a CPU each
        workers = oc.trainer_workers
        self.trainers = TrainerGroup(ray, cfg, colocated, max(1, threads // workers), gpus, workers)
        self.trainer_actor = self.trainers.rank0
        restart = dict(max_restarts=oc.max_restarts, max_task_retries=0)
        self.reward_actors = [ray.remote(RewardActor).options(num_cpus=0, **restart).remote(cfg.rl.reward)
                              for _ in range(oc.reward_workers)]
        info = self.trainers.call("info")
        self.info = info
        self.trainer = TrainerProxy(self.trainers, info)
        if colocated:
            self.rollout: Any = ColocatedRollout(ray, self.trainers)
        else:
            handles = [ray.remote(RolloutActor).options(num_cpus=0, num_gpus=gpus, **restart).remote(cfg, threads)
                       for _ in range(oc.rollout_workers)]
            root = str(Path(out_dir) / "weight_sync") if oc.weight_sync == "disk" else None
            self.rollout = DisaggregatedRollout(ray, self.trainers, _Actors(ray, handles, oc.max_restarts),
                                                oc.weight_sync, int(oc.bucket_mb * 2 ** 20), root)
            self.info = {**info, "rollout_precision": ray.get(handles[0].precision.remote())}
        self.reward = _RewardProxy(ray, self.reward_actors, oc.max_restarts)
        self.rollout.load_weights(None, 0)  # the rollout copies start from the trainer's weights

    @property
    def step(self) -> int:
        """Optimizer steps done (the trainer actor's)."""
        return int(self.ray.get(self.trainer_actor.step.remote()))

    @property
    def restarts(self) -> int:
        """Rollout and reward calls redone after their actor died."""
        r = self.reward.actors.restarts
        return r + (self.rollout.actors.restarts if isinstance(self.rollout, DisaggregatedRollout) else 0)

    def load(self, path: Path, prompts: Any, extra: dict[str, Any] | None = None) -> None:
        """Resume the trainer actor from `path`, `prompts` and the `extra` `Stateful`s (the loop)
        from their saved states, and hand the rollout the restored weights."""
        extra = extra or {}
        p_state, states = self.trainers.call("load", str(path), list(extra))
        prompts.load_state_dict(p_state)
        for k, obj in extra.items():
            obj.load_state_dict(states[k])
        version = int(self.ray.get(self.trainer_actor.step.remote()))
        self.trainer.weight_version = version
        self.rollout.load_weights(None, version)

    def save(self, out_dir: Path, prompts: Any, keep_last: int, extra: dict[str, Any] | None = None) -> Path:
        """Checkpoint on the trainer actor, with the driver's prompt position and the states of the
        `extra` `Stateful`s (the loop's buffered rollout)."""
        states = {k: obj.state_dict() for k, obj in (extra or {}).items()}
        return Path(self.trainers.call("save", str(out_dir), prompts.state_dict(), keep_last, states))

    def export_hf(self, path: Path) -> None:
        """The trainer actor writes the HF folder."""
        self.trainers.call("export_hf", str(path))

    def describe(self) -> dict[str, Any]:
        """What the banner prints (the trainer actor's `describe_policy`; disaggregated, the
        rollout precision is the first rollout actor's) and the placement."""
        return self.info

    def close(self) -> None:
        """Stop the actors (their reward pools first) and, when this run started Ray, Ray."""
        ray = self.ray
        for a in self.reward_actors:
            try:
                ray.get(a.close.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - an actor already gone has nothing to close
                pass
        for a in [*self.trainers.handles, *self.reward_actors,
                  *(self.rollout.actors.handles if isinstance(self.rollout, DisaggregatedRollout) else [])]:
            ray.kill(a)
        if self._own_ray:
            ray.shutdown()
