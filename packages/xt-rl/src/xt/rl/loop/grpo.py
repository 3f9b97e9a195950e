"""One synchronous GRPO-family RL step on one process, from separable parts.

    prompts (PromptSource) --RolloutRequest--> rollout engine --RolloutResult-->
    decode --RewardRequest--> reward worker --RewardResult--> [KL in the reward: TrainRequest -->
    trainer.sequence_kl] --> advantages (+ DAPO shaping)
    --TrainRequest--> PolicyTrainer --TrainResult--> weights to the rollout engine (version bump)

Each arrow is a msgspec message (`xt.rl.rollout.protocol`, `xt.rl.loop.messages`), so the rollout,
reward and trainer objects can be moved into their own processes or Ray actors without changing
what they exchange. Here they share the process; the rollout engine holds the policy model itself
(colocated: the weight hand-over is a version bump, ``load_weights(None, version)``). Under Ray
(`xt.rl.cluster`) the same loop drives proxies of the actors, whose ``load_weights(None, version)``
moves the trainer's weights to the rollout actors.

The step's metrics (`GRPOLoop.step`) are those of docs/architecture.md (RL metrics): reward mean /
std, pass@1, the share of groups without reward spread, response lengths, the trainer's loss
metrics (entropy, KL, clip fractions, importance ratios, mismatch), routing agreement, tokens/s of
rollout and trainer, and the time of each part.
"""
from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import msgspec
import torch

from xt.rl.advantages import group_advantages
from xt.rl.config import RLConfig
from xt.rl.dapo import dynamic_sampling, overlong_keep, overlong_penalty
from xt.rl.kl import kl_penalized_rewards
from xt.rl.loop.messages import RewardRequest, RewardResult, TrainRequest, TrainSample
from xt.rl.loop.prompts import PromptSource
from xt.rl.rollout.protocol import RolloutRequest, RolloutResult, RolloutSample, SamplingParams, decode, encode
from xt.rl.run_config import RolloutConfig

__all__ = ["RewardWorker", "GRPOLoop", "PASS_REWARD", "MAX_EXTRA_ROUNDS"]

#: a sample "passes" (pass@1) when its reward reaches this
PASS_REWARD = 1.0
#: dynamic sampling draws at most this many extra rounds per step
MAX_EXTRA_ROUNDS = 3


class _Round(NamedTuple):
    batch: list[dict]
    result: RolloutResult
    completions: list[str]
    scored: RewardResult
    rewards: torch.Tensor


class RewardWorker:
    """Scores a `RewardRequest` with a `xt.rl.rewards.RewardPool` (process pool, per-call timeouts)."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def score(self, request: RewardRequest) -> RewardResult:
        """One reward per completion (the pool's timeout / error rewards where a call failed)."""
        t0 = time.perf_counter()
        res = self.pool.score(request.completions, request.samples)
        return RewardResult(rewards=[float(r) for r in res.rewards], counts=dict(res.counts),
                            seconds=time.perf_counter() - t0)


class GRPOLoop:
    """The synchronous RL loop (module docstring).

    Args:
        prompts: the `PromptSource` (its state is the data position).
        render: ``sample -> prompt token ids`` (`xt.rl.loop.prompts.render_prompt` bound to a tokenizer).
        decode: ``response token ids -> completion text`` (special tokens skipped).
        rollout: a rollout engine (`xt.rl.rollout.protocol.RolloutEngine`).
        reward: a `RewardWorker` (anything with ``score(RewardRequest) -> RewardResult``).
        trainer: a `xt.rl.loop.trainer.PolicyTrainer`.
        rl, rollout_cfg: the ``[rl]`` and ``[rollout]`` sections.
        stop_token_ids: tokens that end a response (the tokenizer's end of turn).
        overlap: one-step off-policy overlap (``orchestrator.max_staleness = 1``): each step's
            rollout is started during the previous step, before its update, so generation and
            training can run at the same time on separate actors; needs a rollout with
            ``submit(request)`` / ``collect(handle)`` (`xt.rl.cluster`). The loop is then `Stateful`
            (the buffered rollout goes into checkpoints).
    """

    def __init__(self, prompts: PromptSource, render: Callable[[dict], list[int]],
                 decode: Callable[[list[int]], str], rollout: Any, reward: Any, trainer: Any, *,
                 rl: RLConfig, rollout_cfg: RolloutConfig, stop_token_ids: list[int], overlap: bool = False) -> None:
        if overlap and (rl.dynamic_sampling or not hasattr(rollout, "submit")):
            raise ValueError("GRPOLoop: overlap needs a rollout engine with submit/collect and no dynamic sampling")
        self.overlap = overlap
        self._pending: tuple[list[dict], Any] | None = None
        self.prompts, self.render, self.decode = prompts, render, decode
        self.rollout, self.reward, self.trainer = rollout, reward, trainer
        self.rl, self.cfg = rl, rollout_cfg
        self.sampling = SamplingParams(max_new_tokens=rollout_cfg.max_new_tokens, temperature=rl.temperature,
                                       top_p=rollout_cfg.top_p, stop_token_ids=list(stop_token_ids))

    def _advantages(self, rewards: torch.Tensor, samples: list[RolloutSample]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(advantages [N], shaped rewards [N], keep [N])`` with DAPO's overlong shaping / filter."""
        lengths = torch.tensor([len(s.response_ids) for s in samples])
        truncated = torch.tensor([s.finish_reason == "length" for s in samples])
        budget = self.rl.max_response_tokens or self.cfg.max_new_tokens
        ov = self.rl.overlong
        shaped = rewards
        if ov.buffer_tokens:
            shaped = rewards + overlong_penalty(lengths, max_tokens=budget, buffer_tokens=ov.buffer_tokens,
                                                factor=ov.penalty).double()
        keep = overlong_keep(truncated=truncated) if ov.filter else torch.ones(len(lengths), dtype=torch.bool)
        G = self.cfg.group_size
        adv = group_advantages(shaped.view(-1, G), estimator=self.rl.advantage, scale_by_std=self.rl.scale_by_std,
                               eps=self.rl.std_eps, nonfinite=self.rl.nonfinite_reward).reshape(-1)
        return adv, shaped, keep

    def _request(self, step: int, round_: int, n_prompts: int) -> tuple[list[dict], RolloutRequest]:
        batch = self.prompts.next(n_prompts)
        request = RolloutRequest(prompts=[self.render(s) for s in batch], n=self.cfg.group_size,
                                 sampling=self.sampling, seed=self.cfg.seed + step + 1_000_003 * round_,
                                 record_experts=self.cfg.routing_replay or getattr(self.trainer, "is_moe", False),
                                 request_id=f"step-{step}.{round_}")
        return batch, request

    def _round(self, step: int, round_: int, n_prompts: int) -> _Round:
        """Draw `n_prompts` prompts, sample ``group_size`` responses each and score them."""
        batch, request = self._request(step, round_, n_prompts)
        return self._score(batch, self.rollout.generate(request))

    def _score(self, batch: list[dict], result: RolloutResult) -> _Round:
        completions = [self.decode(s.response_ids) for s in result.samples]
        scored = self.reward.score(RewardRequest(completions=completions,
                                                 samples=[batch[s.prompt_index] for s in result.samples]))
        return _Round(batch, result, completions, scored, torch.tensor(scored.rewards, dtype=torch.float64))

    def _dynamic_sampling(self, step: int, first: _Round) -> tuple[list[RolloutSample], torch.Tensor, int]:
        """DAPO's dynamic sampling: keep the groups with reward spread, over-sample (at most
        `MAX_EXTRA_ROUNDS` more rounds) until ``prompts_per_step`` such groups are there, then cut to
        that many. Returns the kept samples, their rewards and the rounds drawn. With no kept group at
        all the first round is returned unchanged (its advantages are all 0)."""
        G, B = self.cfg.group_size, self.cfg.prompts_per_step
        kept_s: list[RolloutSample] = []
        kept_r: list[torch.Tensor] = []
        rnd, rounds = first, 1
        while True:
            ds = dynamic_sampling(rnd.rewards.view(-1, G), target_groups=B - len(kept_r))
            for g in ds.kept_groups.tolist():
                kept_s.extend(rnd.result.samples[g * G:(g + 1) * G])
                kept_r.append(rnd.rewards[g * G:(g + 1) * G])
            if len(kept_r) >= B or rounds > MAX_EXTRA_ROUNDS:
                break
            rnd = self._round(step, rounds, ds.groups_to_draw)
            rounds += 1
        if not kept_r:
            return list(first.result.samples), first.rewards, rounds
        return kept_s[:B * G], torch.cat(kept_r[:B]), rounds

    def _prefetched(self, step: int) -> _Round:
        """One-step overlap: this step's rollout (started during the previous step, or now for the
        first), then start the next step's on the weights of now, before this step's update."""
        if self._pending is None:
            batch, request = self._request(step, 0, self.cfg.prompts_per_step)
            self._pending = (batch, self.rollout.submit(request))
        batch, fut = self._pending
        result = fut if isinstance(fut, RolloutResult) else self.rollout.collect(fut)
        nb, nreq = self._request(step + 1, 0, self.cfg.prompts_per_step)
        self._pending = (nb, self.rollout.submit(nreq))
        return self._score(batch, result)

    def state_dict(self) -> dict[str, bytes]:
        """The buffered rollout of the next step (one-step overlap), collected and as msgpack
        bytes; empty without one. A checkpoint holds it, so a resumed run trains on the same samples."""
        if self._pending is None:
            return {}
        batch, fut = self._pending
        result = fut if isinstance(fut, RolloutResult) else self.rollout.collect(fut)
        self._pending = (batch, result)
        return {"batch": msgspec.msgpack.encode(batch), "result": encode(result)}

    def load_state_dict(self, state: dict[str, bytes]) -> None:
        """Restore the buffered rollout of `state_dict`."""
        self._pending = None
        if state:
            self._pending = (msgspec.msgpack.decode(state["batch"]), decode(state["result"], RolloutResult))

    def step(self, step: int) -> dict[str, Any]:
        """Run RL step `step` (1-based): rollout, rewards, advantages, updates. Returns its metrics
        (the reward statistics are of the step's first round, before any dynamic-sampling filter).
        With ``overlap`` the rollout is the one started during the previous step, on the weights
        before that step's update (``rollout_staleness`` = 1 RL step from step 2 on)."""
        t0 = time.perf_counter()
        version_before = getattr(self.trainer, "weight_version", 0)
        first = self._prefetched(step) if self.overlap else self._round(step, 0, self.cfg.prompts_per_step)
        result, rewards = first.result, first.rewards
        train_samples, train_rewards, rounds = list(result.samples), rewards, 1
        if self.rl.dynamic_sampling:
            train_samples, train_rewards, rounds = self._dynamic_sampling(step, first)
        seq_kl = None
        if self.rl.kl_coef > 0 and self.rl.kl_in == "reward":  # r_i - kl_coef * sum_t k(x_t), no gradient
            seq_kl = torch.tensor(self.trainer.sequence_kl(TrainRequest(samples=[
                TrainSample(prompt_ids=s.prompt_ids, response_ids=s.response_ids, advantage=0.0,
                            rollout_log_probs=s.log_probs, routed_experts=s.routed_experts)
                for s in train_samples], step=step)), dtype=torch.float64)
            train_rewards = kl_penalized_rewards(train_rewards, seq_kl, self.rl.kl_coef)
        adv, shaped, keep = self._advantages(train_rewards, train_samples)
        samples = [TrainSample(prompt_ids=s.prompt_ids, response_ids=s.response_ids, advantage=float(a),
                               rollout_log_probs=s.log_probs, keep=bool(k), routed_experts=s.routed_experts)
                   for s, a, k in zip(train_samples, adv.tolist(), keep.tolist())]
        trained = self.trainer.train(TrainRequest(samples=samples, step=step))
        t_sync = time.perf_counter()
        self.rollout.load_weights(None, trained.weight_version)  # colocated: the same model, new version
        sync_s = time.perf_counter() - t_sync
        G = self.cfg.group_size
        finite = rewards[torch.isfinite(rewards)]
        groups = rewards.view(-1, G)
        lens = torch.tensor([len(s.response_ids) for s in result.samples], dtype=torch.float64)
        n_resp = int(lens.sum())
        m: dict[str, Any] = {
            "step": step,
            "reward_mean": float(finite.mean()) if finite.numel() else None,
            "reward_std": float(finite.std(unbiased=False)) if finite.numel() else None,
            "pass_at_1": float((rewards >= PASS_REWARD).double().mean()),
            "zero_std_group_frac": float((groups.max(1).values == groups.min(1).values).double().mean()),
            "response_len_mean": float(lens.mean()),
            "response_len_max": int(lens.max()),
            "response_clipped_frac": float(torch.tensor([s.finish_reason == "length" for s in result.samples]).double().mean()),
            "reward_timeouts": first.scored.counts.get("timeout", 0),
            "reward_errors": first.scored.counts.get("error", 0),
            "rollout_tokens": n_resp,
            "rollout_s": result.seconds,
            "rollout_tokens_per_s": n_resp / result.seconds if result.seconds > 0 else None,
            "reward_s": first.scored.seconds,
            "weight_sync_s": sync_s,
            "weight_version": trained.weight_version,
        }
        if self.overlap:
            m["rollout_staleness"] = (version_before - result.weight_version) // self.cfg.updates_per_step
        if seq_kl is not None:
            m["kl_seq_mean"] = float(seq_kl.mean())
        if self.rl.overlong.buffer_tokens:
            m["shaped_reward_mean"] = float(shaped[torch.isfinite(shaped)].mean())
        if self.rl.dynamic_sampling:
            m["dynamic_sampling_rounds"] = rounds
            m["dynamic_sampling_groups"] = len(train_samples) // G
        m.update(trained.metrics)
        m["step_time_s"] = time.perf_counter() - t0
        return m
