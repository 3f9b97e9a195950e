"""Small parts of the RL loop, against values written out by hand:

- `numeric_answer_reward`: the last number of the reply (or of its <answer> span) against the answer;
- `PromptSource`: a seeded order per epoch, the state resumes the same sequence, a wrong-size state
  is refused;
- `split_evenly`: consecutive, covering, sizes within one;
- the msgspec messages survive msgpack.
"""
from __future__ import annotations

import pytest

from xt.rl.loop.messages import TrainRequest, TrainSample
from xt.rl.loop.prompts import PromptSource
from xt.rl.loop.trainer import split_evenly
from xt.rl.rewards.numeric import last_number, numeric_answer_reward
from xt.rl.rollout import IntArray, decode, encode


@pytest.mark.parametrize("reply, answer, want", [
    ("7", "7", 1.0), ("3 + 4 = 7.", 7, 1.0), ("The answer is 7", "7", 1.0), ("7 or maybe 8", "7", 0.0),
    ("-3", "-3", 1.0), ("1,234", "1234", 1.0), ("2.50", "2.5", 1.0), ("no idea", "7", 0.0),
    ("<answer>12</answer> then 3", "12", 1.0), ("", "0", 0.0),
])
def test_numeric_answer_reward(reply, answer, want):
    assert numeric_answer_reward(reply, {"answer": answer}) == want


def test_numeric_answer_reward_refuses_a_non_numeric_reference():
    assert last_number("x") is None
    with pytest.raises(ValueError, match="not a number"):
        numeric_answer_reward("7", {"answer": "seven"})


def test_prompt_source_order_and_resume():
    samples = [{"question": str(i), "answer": i} for i in range(5)]
    a = PromptSource(samples, seed=3)
    first = [s["answer"] for s in a.next(7)]  # crosses into epoch 1
    assert sorted(first[:5]) == list(range(5)) and a.epoch == 1 and a.pos == 2
    state = a.state_dict()
    rest = [s["answer"] for s in a.next(6)]
    b = PromptSource(samples, seed=3)
    b.load_state_dict(state)
    assert [s["answer"] for s in b.next(6)] == rest
    assert [s["answer"] for s in PromptSource(samples, seed=3).next(7)] == first
    with pytest.raises(ValueError, match="5"):
        PromptSource(samples[:4], seed=3).load_state_dict(state)


def test_split_evenly():
    assert [list(r) for r in split_evenly(7, 3)] == [[0, 1], [2, 3], [4, 5, 6]]
    assert [list(r) for r in split_evenly(2, 2)] == [[0], [1]]


def test_train_request_round_trips():
    import torch
    req = TrainRequest(step=3, samples=[TrainSample(prompt_ids=[1, 2], response_ids=[3], advantage=-0.5,
                                                    rollout_log_probs=[-1.25], keep=False,
                                                    routed_experts=IntArray.from_tensor(torch.tensor([[[0, 3]] * 3])))])
    back = decode(encode(req), TrainRequest)
    assert back == req and back.samples[0].routed_experts.to_tensor().tolist() == [[[0, 3]] * 3]


class _Rollout:
    """Prompt ids [q]: sample j of prompt [q] answers [q, j] (one token); records requests."""

    def __init__(self):
        from xt.rl.rollout import RolloutResult, RolloutSample
        self.requests, self._res, self._smp = [], RolloutResult, RolloutSample
        self.weight_version = 0

    def generate(self, req):
        self.requests.append(req)
        samples = [self._smp(prompt_index=i, prompt_ids=p, response_ids=[p[0], j], log_probs=[-1.0, -1.0],
                             finish_reason="stop", weight_version=0)
                   for i, p in enumerate(req.prompts) for j in range(req.n)]
        return self._res(samples=samples, weight_version=0, seconds=1.0)

    def load_weights(self, sd, version):
        self.weight_version = version


class _Reward:
    """Question q: reward j for sample j when q is odd (spread), 0.5 for all when q is even (no spread)."""

    def score(self, req):
        from xt.rl.loop.messages import RewardResult
        rewards = [float(int(c.split()[1])) if int(s["question"]) % 2 else 0.5
                   for c, s in zip(req.completions, req.samples)]
        return RewardResult(rewards=rewards, counts={"ok": len(rewards)}, seconds=0.0)


class _Trainer:
    is_moe = False

    def __init__(self):
        self.requests = []

    def train(self, req):
        from xt.rl.loop.messages import TrainResult
        self.requests.append(req)
        return TrainResult(metrics={"policy_loss": 0.0}, weight_version=len(self.requests))


def _loop(dynamic: bool):
    from xt.rl.config import RLConfig
    from xt.rl.loop.grpo import GRPOLoop
    from xt.rl.run_config import RolloutConfig

    samples = [{"question": str(q), "answer": 0} for q in range(8)]  # order 0..7 without shuffling below
    src = PromptSource(samples, seed=0)
    src._order = list(range(8))
    rollout, trainer = _Rollout(), _Trainer()
    loop = GRPOLoop(src, lambda s: [int(s["question"])], lambda ids: " ".join(map(str, ids)), rollout, _Reward(),
                    trainer, rl=RLConfig(dynamic_sampling=dynamic), stop_token_ids=[],
                    rollout_cfg=RolloutConfig(prompts_per_step=2, group_size=3, max_new_tokens=4))
    return loop, rollout, trainer


def test_dynamic_sampling_over_samples_until_the_batch_has_groups_with_spread():
    loop, rollout, trainer = _loop(dynamic=True)
    m = loop.step(1)
    # round 0: questions 0 (no spread) and 1 (spread): 1 group kept, 1 needed at keep rate 1/2 -> 2 more
    # prompts (2, 3): 3 kept -> batch full with questions 1 and 3
    assert [r.prompts for r in rollout.requests] == [[[0], [1]], [[2], [3]]]
    got = trainer.requests[0].samples
    assert [x.prompt_ids[0] for x in got] == [1, 1, 1, 3, 3, 3]
    # GRPO advantages of rewards (0, 1, 2): (r - 1) / (sample std 1 + eps 1e-6)
    assert [round(x.advantage, 5) for x in got] == [-1.0, 0.0, 1.0] * 2
    assert m["dynamic_sampling_rounds"] == 2 and m["dynamic_sampling_groups"] == 2
    assert m["reward_mean"] == pytest.approx((0.5 * 3 + 3) / 6) and m["zero_std_group_frac"] == 0.5
    assert m["weight_version"] == 1 and rollout.weight_version == 1


def test_without_dynamic_sampling_the_flat_groups_train_with_zero_advantage():
    loop, rollout, trainer = _loop(dynamic=False)
    loop.step(1)
    got = trainer.requests[0].samples
    assert len(rollout.requests) == 1 and [x.prompt_ids[0] for x in got] == [0, 0, 0, 1, 1, 1]
    assert [x.advantage for x in got[:3]] == [0.0, 0.0, 0.0]
