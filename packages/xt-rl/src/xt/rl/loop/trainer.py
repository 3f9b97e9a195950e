"""The trainer part of the RL loop: one RL step's samples -> policy-gradient updates through the `Engine`.

Per step (a `TrainRequest`): the samples are split in order into ``updates_per_step`` updates and
each update into ``micro_batches`` RL micro-batches (`xt.rl.batch.pack_samples`, with the rollout's
log-probs and, under routing replay, its experts). With more than one update the old log-probs of
all samples are computed first (`forward_log_probs`, the policy before this step); with one they
are the current ones (ratio 1 exactly, no extra forward). On MoE models the routing agreement with
the rollout (`xt.rl.replay.routing_agreement`) is measured before each update and averaged. A reference model, when ``rl.kl_coef > 0``,
gives ``ref_log_probs`` (``rl.kl_in = "loss"``) or, through `PolicyTrainer.sequence_kl`, the per-sample
KL the driver subtracts from the rewards (``rl.kl_in = "reward"``); under routing replay the reference
routes by its own router (the recorded experts are the rollout policy's choices). Each update is ``Engine.forward_backward(mbs, PolicyLoss)`` then
``optim_step``, and bumps the weight version.

**Data parallel** (a trainer laid out over several ranks, e.g. Ray trainer actors with FSDP2): every
rank receives the whole request and trains on its contiguous share of each update's samples
(``dist.dp_rank`` of ``dist.dp_size``); the losses' global counts (`xt.rl.aggregate.step_totals`) and
metrics are summed over ranks by the engine, so the objective is the one-process one. The routing
agreement is each rank's share's, averaged over the ranks.

**Ulysses sequence parallelism** (``parallel.sp_size = P > 1``; trainer ranks = dp x P): the P ranks
of an SP group take the same share, and every micro-batch is cut into their slices right after
packing (`xt.rl.seq_parallel.SequenceShards.shard`), so the old / reference log-probs, the loss and
the routing agreement all run on slices (Ulysses' attention sees whole documents). The loss gets
the SP group for its whole-sequence sums (`PolicyLoss(sp=...)`), `sequence_kl` adds the per-sample
partial sums over the group, the routing agreement adds its counts over the group (without the SP
padding), and ``trainer_tokens`` counts the tokens before the SP padding: the objective, gradients
and logged values are those of ``sp_size = 1``.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from xt.models.common.routing_replay import decoder_routers, enable_routing_replay
from xt.rl.batch import ROUTED_EXPERTS, SP_TOKENS, loss_token_mask, pack_samples
from xt.rl.config import RLConfig
from xt.rl.kl import sequence_kl
from xt.rl.loop.messages import TrainRequest, TrainResult, TrainSample
from xt.rl.losses import PolicyLoss, forward_log_probs
from xt.rl.replay import routing_agreement
from xt.rl.seq_parallel import index_of, sequence_shards

__all__ = ["PolicyTrainer", "split_evenly"]


def split_evenly(n: int, parts: int) -> list[range]:
    """``parts`` consecutive ranges covering ``range(n)``, sizes differing by at most one (none empty
    when ``parts <= n``)."""
    bounds = [n * i // parts for i in range(parts + 1)]
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _scalar(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if f == f and abs(f) != float("inf") else None


class PolicyTrainer:
    """Policy-gradient updates of one RL step (module docstring).

    Args:
        engine: the policy's `xt.core.engine.Engine` (its model is trained in place).
        rl: the ``[rl]`` section.
        updates_per_step: optimizer steps per RL step (``rollout.updates_per_step``).
        micro_batches: micro-batches per update (``train.micro_batches_per_step``).
        routing_replay: pass the rollout's experts to the model (``rollout.routing_replay``).
        reference: a frozen reference `Engine` for ``rl.kl_coef > 0``, else None.
        weight_version: the version of the weights the engine holds now.
        dist: the layout's `DistContext` (``dp_rank`` / ``dp_size`` pick this rank's samples;
            ``sp_size > 1`` splits each micro-batch over the SP group, module docstring); None
            or one without them = all samples.
    """

    def __init__(self, engine: Any, rl: RLConfig, *, updates_per_step: int = 1, micro_batches: int = 1,
                 routing_replay: bool = False, reference: Any = None, weight_version: int = 0,
                 dist: Any = None) -> None:
        if rl.kl_coef > 0 and rl.kl_in == "loss" and reference is None:
            raise ValueError("PolicyTrainer: rl.kl_coef > 0 with rl.kl_in = 'loss' needs a reference engine")
        self.engine, self.rl = engine, rl
        self.sp = sequence_shards(dist)
        self.loss = PolicyLoss(rl, sp=self.sp)
        self.updates_per_step, self.micro_batches = updates_per_step, micro_batches
        self.reference = reference
        self.weight_version = weight_version
        self.dp_rank, self.dp_size = int(getattr(dist, "dp_rank", 0)), int(getattr(dist, "dp_size", 1))
        self._dist = dist
        self.is_moe = bool(decoder_routers(engine.model))
        self.routing_replay = routing_replay and self.is_moe
        self._replay_hook = enable_routing_replay(engine.model) if self.routing_replay else None

    def _batches(self, samples: Sequence[TrainSample], with_experts: bool) -> list[dict[str, Any]]:
        out = []
        for part in split_evenly(len(samples), self.micro_batches):
            s = [samples[i] for i in part]
            out.append(pack_samples(
                [x.prompt_ids for x in s], [x.response_ids for x in s], advantages=[x.advantage for x in s],
                rollout_log_probs=[x.rollout_log_probs for x in s], keep=[x.keep for x in s],
                routed_experts=[x.routed_experts.to_tensor() for x in s] if with_experts else None))
        return [self.sp.shard(mb) for mb in out] if self.sp is not None else out

    def _routing(self, mb: dict[str, Any]) -> dict[str, float]:
        """The routing agreement of one micro-batch (the whole one, under SP)."""
        if self.sp is None:
            return routing_agreement(self.engine.model, mb)
        return routing_agreement(self.engine.model, mb, valid=self.sp.real_tokens(mb), reduce=self.sp.sum)

    def _share(self, samples: list[TrainSample]) -> list[TrainSample]:
        """This data-parallel rank's contiguous share of one update's samples (all of them at dp_size 1).

        Raises:
            ValueError: fewer samples than ``dp_size * micro_batches`` (a rank would run fewer
                micro-batches than the others, and sharded forwards are collective).
        """
        if self.dp_size == 1:
            return samples
        if len(samples) < self.dp_size * self.micro_batches:
            raise ValueError(f"PolicyTrainer: an update has {len(samples)} samples, fewer than trainer ranks "
                             f"({self.dp_size}) x micro-batches ({self.micro_batches})")
        return samples[slice(*[len(samples) * r // self.dp_size for r in (self.dp_rank, self.dp_rank + 1)])]

    def train(self, request: TrainRequest) -> TrainResult:
        """Run the updates of one step; returns the metrics averaged over its updates (loss metrics
        are the engine's step sums: global token means) and the new weight version.

        Raises:
            ValueError: no samples, or routing replay without recorded experts.
        """
        samples = request.samples
        if not samples:
            raise ValueError("PolicyTrainer.train: the step has no samples")
        has_experts = all(x.routed_experts is not None for x in samples)
        if self.routing_replay and not has_experts:
            raise ValueError("rollout.routing_replay: the rollout returned no routed experts for some samples")
        t0 = time.perf_counter()
        metrics: dict[str, list[float]] = {}

        def add(k: str, v: Any) -> None:
            f = _scalar(v)
            if f is not None:
                metrics.setdefault(k, []).append(f)

        updates = [self._share([samples[i] for i in part])
                   for part in split_evenly(len(samples), self.updates_per_step)]
        per_update = [self._batches(u, self.routing_replay) for u in updates]
        measure = self.is_moe and has_experts  # how often the trainer's own routing differs from the rollout's
        if self.updates_per_step > 1:
            for mbs in per_update:
                for mb, old in zip(mbs, forward_log_probs(self.engine, mbs, temperature=self.rl.temperature)):
                    mb["old_log_probs"] = old
        if self.reference is not None and self.rl.kl_in == "loss":
            for mbs in per_update:
                for mb, ref in zip(mbs, forward_log_probs(self.reference, _own_routing(mbs),
                                                          temperature=self.rl.temperature)):
                    mb["ref_log_probs"] = ref
        tokens = 0
        for u, mbs in zip(updates, per_update):
            if measure:  # before each update: after the first one the weights are no longer the rollout's
                for mb in (mbs if self.routing_replay else self._batches(u, True)):
                    for k, v in self._routing(mb).items():
                        add(k, v)
            self.engine.zero_grad()
            stats = self.engine.forward_backward(mbs, self.loss)
            opt = self.engine.optim_step()
            tokens += stats.num_tokens if self.sp is None else sum(mb[SP_TOKENS] for mb in mbs)
            for k, v in stats.loss_metrics.items():
                add(k, v)
            add("grad_norm", getattr(opt, "grad_norm", None))
            add("lr", getattr(opt, "lr", None))
            self.weight_version += 1
        dt = time.perf_counter() - t0
        out: dict[str, float | None] = {k: sum(v) / len(v) for k, v in metrics.items()}
        world = self.dp_size * (self.sp.size if self.sp is not None else 1)
        keys = sorted(k for k in out if k.startswith("routing_")) if measure else []
        if world > 1 and (keys or self.sp is not None):
            # each rank measured its share (the same on the ranks of an SP group): the mean over ranks;
            # under SP each rank holds its micro-batches' unpadded token count: their sum over dp ranks
            dev = next(self.engine.model.parameters()).device
            vals = [out[k] for k in keys] + ([float(tokens)] if self.sp is not None else [])
            t = self._dist.all_reduce_sum(torch.tensor(vals, dtype=torch.float64, device=dev)).tolist()
            out.update({k: v / world for k, v in zip(keys, t)})
            if self.sp is not None:
                tokens = int(round(t[-1] / self.sp.size))
        out.update(trainer_tokens=float(tokens), trainer_s=dt, trainer_tokens_per_s=tokens / dt if dt > 0 else None)
        return TrainResult(metrics=out, weight_version=self.weight_version)

    def sequence_kl(self, request: TrainRequest) -> list[float]:
        """Each sample's summed KL estimate ``Σ_t k(log π_ref(y_t) − log π(y_t))`` over its response
        tokens, nats (``rl.kl_estimator``; `xt.rl.kl.sequence_kl`), with π the current policy and
        π_ref the reference engine, both by `forward_log_probs` at ``rl.temperature``: the term
        ``rl.kl_in = "reward"`` subtracts from the rewards (times ``rl.kl_coef``). Sample order kept.

        Every response token counts, also of samples with ``keep = False``. Under data parallelism
        every rank computes every sample (its forwards are collective), so all ranks return the same list;
        under SP each rank its slice of every sample, the sums added over the SP group.

        Raises:
            ValueError: no reference engine, or no samples.
        """
        if self.reference is None:
            raise ValueError("PolicyTrainer.sequence_kl needs a reference engine (rl.kl_coef > 0)")
        if not request.samples:
            raise ValueError("PolicyTrainer.sequence_kl: no samples")
        mbs = self._batches(request.samples, self.routing_replay)
        out: list[float] = []
        pol = forward_log_probs(self.engine, mbs, temperature=self.rl.temperature)
        ref = forward_log_probs(self.reference, _own_routing(mbs), temperature=self.rl.temperature)
        sizes = [len(p) for p in split_evenly(len(request.samples), self.micro_batches)]
        reduce = self.sp.sum if self.sp is not None else None
        for mb, lp, rp, d in zip(mbs, pol, ref, sizes):
            seq, n = index_of(mb, self.sp)
            kl = sequence_kl(lp, rp, loss_token_mask({"labels": mb["labels"]}), seq, n, self.rl.kl_estimator, reduce)
            out.extend(kl[:d].double().tolist())  # under SP: without the padding document
        return out

    def close(self) -> None:
        """Remove the routing-replay hook from the model."""
        if self._replay_hook is not None:
            self._replay_hook.remove()
            self._replay_hook = None


def _own_routing(micro_batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The micro-batches without ``routed_experts``, for the reference: the recorded experts are the
    rollout policy's choices, so under routing replay the reference still routes by its own router
    (π_ref is the reference model's distribution; it has no replay hook either)."""
    return [{k: v for k, v in mb.items() if k != ROUTED_EXPERTS} for mb in micro_batches]
