"""The rollout side of a Ray run as the loop sees it (`xt.rl.cluster.driver` builds them): the
colocated trainer actors' own rollout engines (one rank: on the trained model; several: each rank
on its rollout copy, sampling its share of the prompts), or `RolloutActor` copies whose weights
come from the trainer actors in HF-named buckets (object store, disk, or broadcast over
torch.distributed: ``orchestrator.weight_sync``) and whose calls are redone after a restart.

Both split a request over W workers alike (`split_request`, `merge_samples`), so a colocated run of
N trainer ranks samples exactly what a disaggregated run of N rollout workers samples.
"""
from __future__ import annotations

import time
from typing import Any

import msgspec

from xt.rl.cluster.trainer_group import TrainerGroup
from xt.rl.rollout.protocol import RolloutRequest, RolloutResult, decode, encode

__all__ = ["ColocatedRollout", "DisaggregatedRollout", "split_counts", "split_request", "merge_samples"]


def split_counts(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ``(start, stop)`` ranges over ``range(n)``, sizes differing by at most
    one, empty ones dropped."""
    bounds = [n * i // parts for i in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def split_request(request: RolloutRequest, workers: int) -> tuple[list[tuple[int, int]], list[RolloutRequest]]:
    """The shares of `request` for `workers` rollout workers: ``(parts, requests)``. One worker gets
    the request as it is; several get contiguous prompt ranges (`split_counts`; empty ones
    dropped, so there may be fewer requests than workers), worker k seeded ``seed * 1009 + k``."""
    parts = split_counts(len(request.prompts), workers)
    if workers == 1:
        return parts, [request]
    return parts, [msgspec.structs.replace(request, prompts=request.prompts[a:b], seed=request.seed * 1009 + k)
                   for k, (a, b) in enumerate(parts)]


def merge_samples(parts: list[tuple[int, int]], results: list[RolloutResult]) -> list[Any]:
    """The samples of the `split_request` shares' `results`, in prompt order, each ``prompt_index``
    shifted back to the whole request's."""
    return [msgspec.structs.replace(s, prompt_index=s.prompt_index + a)
            for (a, _), res in zip(parts, results) for s in res.samples]


class ColocatedRollout:
    """The rollout interface over the colocated trainer actors (`TrainerGroup`). One rank samples
    on the trained model (hand-over = version). N ranks each sample a `split_request` share on
    their own rollout copy, in parallel; the hand-over refreshes every copy from the sharded policy
    (collective over the ranks)."""

    def __init__(self, ray: Any, trainers: TrainerGroup) -> None:
        self.ray, self.trainers = ray, trainers
        self.weight_version = 0
        self.sync_bytes = 0

    def generate(self, request: RolloutRequest) -> RolloutResult:
        """Sample `request` on the trainer ranks (shares as `DisaggregatedRollout` splits them over
        that many rollout workers), in prompt order.

        Raises:
            RuntimeError: a rank answers with another weight version than the last hand-over's.
        """
        t0 = time.perf_counter()
        parts, reqs = split_request(request, len(self.trainers.handles))
        refs = [h.generate.remote(encode(r)) for h, r in zip(self.trainers.handles, reqs)]
        outs = [decode(b, RolloutResult) for b in self.ray.get(refs)]
        bad = [k for k, o in enumerate(outs) if o.weight_version != self.weight_version]
        if bad:
            raise RuntimeError(f"colocated trainer ranks {bad} answer with weight version "
                               f"{outs[bad[0]].weight_version}, not {self.weight_version}")
        return RolloutResult(samples=merge_samples(parts, outs), weight_version=self.weight_version,
                             seconds=time.perf_counter() - t0, request_id=request.request_id)

    def load_weights(self, state_dict: Any, version: int) -> None:
        """In-memory hand-over of the trainer's current weights as `version` on every rank
        (``state_dict`` is ignored: they are the trainer actors'); ``sync_bytes``: what rank 0's
        rollout copy received (0 on the trained model itself)."""
        self.sync_bytes = int(self.trainers.call("set_rollout_version", version))
        self.weight_version = version


class DisaggregatedRollout:
    """The rollout interface over `RolloutActor` copies: requests split by prompts, weights
    published by the trainer in HF-named buckets and loaded by every copy, or broadcast to them
    over torch.distributed (``how = "collective"``, `xt.rl.cluster.collective`; module docstring)."""

    def __init__(self, ray: Any, trainers: TrainerGroup, actors: Any, how: str, max_bytes: int,
                 root: str | None) -> None:
        self.ray, self.trainers = ray, trainers
        self.how, self.max_bytes, self.root = how, max_bytes, root
        self.actors = actors  # the driver's restart-and-redo calls over the rollout actors
        actors.on_restart = self._resync
        self.weight_version = 0
        self._handle: Any = None
        self._target: tuple[Any, int] | None = None  # the weights a rollout in `collect` was submitted with
        self.sync_bytes = 0
        self._store: Any = None  # collective: the TCP store of the weight-sync group (hosted here)
        self._groups = 0
        self._plan: Any = None

    def _regroup(self) -> None:
        """(Re)build the weight-sync group: trainer rank 0 and every rollout actor join a new one."""
        import datetime

        import torch.distributed as tdist
        if self._store is None:
            host = self.ray.util.get_node_ip_address()
            self._store = tdist.TCPStore(host, 0, is_master=True, wait_for_workers=False,
                                         timeout=datetime.timedelta(seconds=600))
            self._address = f"{host}:{self._store.port}"
        self._groups += 1
        prefix, world = f"weight_sync/{self._groups}", 1 + len(self.actors.handles)
        refs = self.trainers.submit("join_weight_group", self._address, prefix, world)
        refs += [h.join_weight_group.remote(self._address, prefix, 1 + i, world)
                 for i, h in enumerate(self.actors.handles)]
        self.ray.get(refs)

    def _broadcast(self, version: int) -> None:
        """Collective sync: every trainer rank streams, rank 0 broadcasts, every rollout actor receives.

        A rollout actor that dies during the broadcast makes the others' broadcasts fail (each
        closes its end of the group, `xt.rl.cluster.collective`); once Ray has restarted it (counted
        in ``actors.restarts``), every member joins a new group and the whole broadcast runs again,
        up to ``max_restarts`` times.

        Raises:
            RuntimeError: a broadcast failed with no actor dead (e.g. a plan mismatch), or actors
                kept dying after ``max_restarts`` new groups.
        """
        if self._plan is None:
            self._regroup()
            self._plan = self.ray.get(self.trainers.rank0.weight_plan.remote(self.max_bytes))
        errors = self.ray.exceptions
        for attempt in range(self.actors.max_restarts + 1):
            sent = self.trainers.submit("broadcast_weights", self.max_bytes, self._plan)
            got = self.actors.submit("receive_weights", [(self._plan, version)] * len(self.actors.handles))
            failure, dead = None, []
            try:
                n = self.ray.get(sent)
            except errors.RayTaskError as e:
                failure = e
            for i, ref in enumerate(got):
                try:
                    self.ray.get(ref)
                except errors.RayActorError:
                    dead.append(i)
                except errors.RayTaskError as e:
                    failure = failure or e
            if not dead and failure is None:
                self.sync_bytes = int(n[0])
                return
            if not dead or attempt == self.actors.max_restarts:
                raise RuntimeError(f"weight sync: the broadcast failed (rollout actors dead: {dead}): "
                                   f"{failure}") from failure
            for i in dead:
                self.actors.restarts += 1
                self.actors.wait_alive(i)
            self._regroup()

    def _resync(self, i: int) -> None:
        if self.how == "collective":  # the restarted actor left the group: a new group for everyone
            self._regroup()
            self._broadcast(self.weight_version)
            return
        handle, version = self._target or (self._handle, self.weight_version)
        if handle is not None:
            self.ray.get(self.actors.handles[i].load_weights.remote(handle, version))

    def load_weights(self, state_dict: Any, version: int) -> None:
        """Hand the trainer's current weights to every rollout actor (``state_dict`` is ignored:
        they are the trainer actors'), after any generation still running: published and loaded
        (object store, disk), or broadcast (collective)."""
        self.weight_version = version
        if self.how == "collective":
            self._broadcast(version)
            return
        self._handle = self.trainers.call("publish_weights", self.how, self.max_bytes, self.root)
        n = self.actors.call_all("load_weights", [(self._handle, version)] * len(self.actors.handles))
        self.sync_bytes = int(n[0])

    def submit(self, request: RolloutRequest) -> dict[str, Any]:
        """Start a rollout on the actors' current weights and return at once (one-step overlap:
        `collect` it later). One worker gets the request as it is; several get contiguous prompt
        shares, worker k seeded ``seed * 1009 + k``."""
        parts, reqs = split_request(request, len(self.actors.handles))
        args = [(encode(r),) for r in reqs]
        return {"args": args, "parts": parts, "refs": self.actors.submit("generate", args), "t0": time.perf_counter(),
                "handle": self._handle, "version": self.weight_version, "request_id": request.request_id}

    def collect(self, pending: dict[str, Any]) -> RolloutResult:
        """The samples of a `submit`ted rollout, in prompt order. A call whose actor died is redone
        on the weights it was submitted with (kept alive for that), and the actor then gets the
        current ones again; an answer with another weight version (the actor came back between
        sync and request) is redone the same way.

        Raises:
            RuntimeError: an actor still answers with the wrong version after a re-sync.
        """
        want = pending["version"]
        self._target = (pending["handle"], want)
        before = self.actors.restarts
        try:
            outs = [decode(b, RolloutResult) for b in self.actors.gather("generate", pending["args"], pending["refs"])]
            for k, res in enumerate(outs):
                if res.weight_version != want:
                    res = outs[k] = decode(self.actors.redo(k, "generate", pending["args"][k]), RolloutResult)
                    if res.weight_version != want:
                        raise RuntimeError(f"rollout actor {k} answers with weight version {res.weight_version} "
                                           f"after a re-sync to {want}")
        finally:
            self._target = None
        if self.actors.restarts != before and want != self.weight_version and self._handle is not None:
            self.actors.call_all("load_weights", [(self._handle, self.weight_version)] * len(self.actors.handles))
        return RolloutResult(samples=merge_samples(pending["parts"], outs), weight_version=want,
                             seconds=time.perf_counter() - pending["t0"], request_id=pending["request_id"])

    def generate(self, request: RolloutRequest) -> RolloutResult:
        """`submit` then `collect`: a synchronous rollout on the current weights."""
        return self.collect(self.submit(request))
