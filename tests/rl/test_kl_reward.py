"""KL in the reward (``rl.kl_in = "reward"``) through the real `PolicyTrainer` and `GRPOLoop`, on a
tiny XT Qwen3 policy and a reference with other weights (float64):

- `PolicyTrainer.sequence_kl` equals each sample's ``Σ_t k(log π_ref − log π)`` written out by
  hand from full logits (k1 and k3), also for a sample with ``keep = False``, over 2 micro-batches;
- one `GRPOLoop` step trains on the GRPO advantages of ``r − kl_coef · KL`` (the hand values), logs
  ``kl_seq_mean``, and the loss itself has no KL term (``kl_in = "reward"``).
"""
from __future__ import annotations

import pytest
import torch

from rl_helpers import response_log_probs, tiny_qwen3
from xt.core.engine import Engine
from xt.rl.advantages import group_advantages
from xt.rl.config import RLConfig
from xt.rl.loop.messages import RewardResult, TrainRequest, TrainSample
from xt.rl.loop.trainer import PolicyTrainer
from xt.rl.rollout import RolloutResult, RolloutSample

PROMPTS = [[3, 9, 1], [7, 2], [5, 5, 6, 1]]
RESPONSES = [[4, 8], [1, 2, 3], [60, 11, 2, 9], [7], [33, 2], [10, 20, 30]]


def _trainer(estimator: str, micro_batches: int = 1) -> tuple[PolicyTrainer, torch.nn.Module, torch.nn.Module]:
    policy, ref = tiny_qwen3(seed=0), tiny_qwen3(seed=1).requires_grad_(False)
    cfg = RLConfig(kl_coef=0.1, kl_in="reward", kl_estimator=estimator)
    tr = PolicyTrainer(Engine(policy, torch.optim.SGD(policy.parameters(), lr=0.0)), cfg, micro_batches=micro_batches,
                       reference=Engine(ref, torch.optim.SGD(ref.parameters(), lr=0.0)))
    return tr, policy, ref


def _hand_kl(policy, ref, prompts, responses, estimator):
    with torch.no_grad():
        lp, rp = response_log_probs(policy, prompts, responses), response_log_probs(ref, prompts, responses)
    out = []
    for a, b in zip(lp, rp):
        x = b - a
        out.append(float((-x).sum() if estimator == "k1" else (torch.exp(x) - 1 - x).sum()))
    return out


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_sequence_kl_equals_the_hand_formula(estimator):
    tr, policy, ref = _trainer(estimator, micro_batches=2)
    prompts = [PROMPTS[i % 3] for i in range(6)]
    samples = [TrainSample(prompt_ids=p, response_ids=r, advantage=0.0, rollout_log_probs=[0.0] * len(r),
                           keep=i != 2) for i, (p, r) in enumerate(zip(prompts, RESPONSES))]
    got = tr.sequence_kl(TrainRequest(samples=samples, step=1))
    want = _hand_kl(policy, ref, prompts, RESPONSES, estimator)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6) and max(abs(w) for w in want) > 0.05


class _Rollout:
    weight_version = 0

    def generate(self, req):
        samples = [RolloutSample(prompt_index=i, prompt_ids=p, response_ids=RESPONSES[i * req.n + j],
                                 log_probs=[0.0] * len(RESPONSES[i * req.n + j]), finish_reason="stop",
                                 weight_version=0) for i, p in enumerate(req.prompts) for j in range(req.n)]
        return RolloutResult(samples=samples, weight_version=0, seconds=1.0)

    def load_weights(self, sd, version):
        self.weight_version = version


class _Reward:
    def score(self, req):
        return RewardResult(rewards=[0.0, 1.0, 1.0, 0.0, 0.5, 1.0], counts={"ok": 6}, seconds=0.0)


def test_grpo_step_trains_on_kl_shaped_rewards():
    from xt.rl.loop.grpo import GRPOLoop
    from xt.rl.loop.prompts import PromptSource
    from xt.rl.run_config import RolloutConfig

    tr, policy, ref = _trainer("k3")
    seen = []
    train = tr.train
    tr.train = lambda req: seen.append(req) or train(req)
    src = PromptSource([{"question": str(i), "answer": 0} for i in range(2)], seed=0)
    order = [int(s["question"]) for s in PromptSource(src.samples, seed=0).next(2)]
    loop = GRPOLoop(src, lambda s: PROMPTS[int(s["question"])], lambda ids: "x", _Rollout(), _Reward(), tr,
                    rl=tr.rl, rollout_cfg=RolloutConfig(prompts_per_step=2, group_size=3, max_new_tokens=4),
                    stop_token_ids=[])
    m = loop.step(1)
    prompts = [PROMPTS[q] for q in order for _ in range(3)]
    kl = torch.tensor(_hand_kl(policy, ref, prompts, RESPONSES, "k3"), dtype=torch.float64)
    shaped = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.5, 1.0], dtype=torch.float64) - 0.1 * kl
    want = group_advantages(shaped.view(2, 3), estimator="grpo").reshape(-1)
    got = [s.advantage for s in seen[0].samples]
    assert got == pytest.approx(want.tolist(), abs=1e-5)
    assert m["kl_seq_mean"] == pytest.approx(float(kl.mean()), rel=1e-5) and "kl" not in m
    raw = group_advantages(torch.tensor([0.0, 1.0, 1.0, 0.0, 0.5, 1.0], dtype=torch.float64).view(2, 3),
                           estimator="grpo").reshape(-1)
    assert (want - raw).abs().max() > 1e-3  # the KL moved the advantages


def test_reference_routes_itself_under_routing_replay():
    """MoE policy with ``routing_replay`` and a reference (kl_in = "reward"): the policy's log-probs
    replay the samples' recorded experts, the reference's come from its own router (it is another
    model; it has no replay hook). With the reference holding the policy's very weights, the KL is
    then exactly the replayed-vs-own-routing difference, written out from two direct forwards."""
    import copy

    from rl_helpers import tiny_moe
    from xt.models.common.routing_replay import enable_routing_replay
    from xt.rl.rollout.protocol import IntArray

    policy = tiny_moe("qwen3_moe", seed=0, dtype=torch.float64)
    ref = copy.deepcopy(policy).requires_grad_(False)
    tr = PolicyTrainer(Engine(policy, torch.optim.SGD(policy.parameters(), lr=0.0)),
                       RLConfig(kl_coef=0.1, kl_in="reward", kl_estimator="k1"), micro_batches=2,
                       routing_replay=True, reference=Engine(ref, torch.optim.SGD(ref.parameters(), lr=0.0)))
    prompts = [PROMPTS[i % 3] for i in range(6)]
    gen = torch.Generator().manual_seed(5)
    routed = [torch.stack([torch.randperm(8, generator=gen)[:2] for _ in range(2 * (len(p) + len(r)))]
                          ).reshape(2, len(p) + len(r), 2) for p, r in zip(prompts, RESPONSES)]  # [L, T, K]
    samples = [TrainSample(prompt_ids=p, response_ids=r, advantage=0.0, rollout_log_probs=[0.0] * len(r),
                           routed_experts=IntArray.from_tensor(e)) for p, r, e in zip(prompts, RESPONSES, routed)]
    got = tr.sequence_kl(TrainRequest(samples=samples, step=1))

    replayed = copy.deepcopy(ref)
    enable_routing_replay(replayed)
    want = []
    with torch.no_grad():
        for p, r, e in zip(prompts, RESPONSES, routed):
            ids = torch.tensor(list(p) + list(r))
            kw = dict(input_ids=ids, position_ids=torch.arange(len(ids)))
            lp = torch.log_softmax(replayed(**kw, routed_experts=e).logits.double(), -1)
            rp = torch.log_softmax(ref(**kw).logits.double(), -1)
            pos = torch.arange(len(p) - 1, len(ids) - 1)
            want.append(float((lp[pos, ids[pos + 1]] - rp[pos, ids[pos + 1]]).sum()))
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)  # float32 log-probs in the trainer and max(abs(w) for w in want) > 1e-3
