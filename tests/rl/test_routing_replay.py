"""MoE routing replay (`xt.models.common.routing_replay`) between XT's rollout engine and the trainer,
on a tiny XT Qwen3-MoE and a tiny XT DeepSeek-V3 (fp32; the gradient check in float64).

The rollout is made with slightly different weights than the trainer holds, so that without replay
the trainer picks other experts for some tokens:

- DeepSeek-V3: the rollout's ``e_score_correction_bias`` differs (what the aux-loss-free bias update
  does between a rollout and the next training step). The bias only selects experts, so with the
  rollout's experts replayed the trainer computes the very same function;
- Qwen3-MoE: the trainer's router has pairs of equal rows (tied experts) and the rollout's has the
  second row of each pair moved by ~1e-7 per element (a tie broken differently, as a rollout engine
  with other kernels would), which changes the combine weights by ~1e-7 only.

Checked: with replay the trainer's log-probs equal the rollout's within 1e-6 (max abs) with float64
weights, and at the fp32 floor of rollout vs trainer (1e-5) with float32 weights; without it
the experts differ on some tokens and the log-probs by far more (measured with
`xt.rl.replay.routing_agreement`, the metric the RL loop logs); under replay the routers' weights
get a nonzero gradient equal to the chain rule through the combine weights written out by hand in
float64 (routers compute in float32, hence the 1e-5 bound).
"""
from __future__ import annotations

import copy

import pytest
import torch

from xt.core.engine import Engine
from xt.models.common.routing_replay import decoder_routers, enable_routing_replay
from xt.rl.batch import pack_samples
from xt.rl.losses import forward_log_probs
from xt.rl.replay import routing_agreement
from xt.rl.rollout import RolloutRequest, SamplingParams, XTRolloutEngine

from rl_helpers import tiny_moe

# float64 weights: only the float32 log-prob outputs differ (4.8e-7 measured). float32 weights: the
# KV-cache decode and the packed forward differ by ~2.5e-6 in log-prob (a few ulps at |log p| ~ 7)
# even with identical weights and routing, so there the bound is the dense one (test_rollout.py).
REPLAY_TOL = {torch.float64: 1e-6, torch.float32: 1e-5}
PROMPTS = [[1, 5, 9, 2], [7, 7], [3, 3, 8, 2, 11, 4]]


def _trainer_and_rollout_models(arch, dtype=torch.float32, eps=1e-7):
    trainer = tiny_moe(arch, dtype=dtype)
    rollout = copy.deepcopy(trainer)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for rt, rr in zip(decoder_routers(trainer), decoder_routers(rollout)):
            if arch == "deepseek_v3":
                rr.e_score_correction_bias.add_(torch.randn(rr.num_experts, generator=g) * 0.05)

            else:
                rt.weight[1] = rt.weight[0]
                rr.weight.copy_(rt.weight)
                rr.weight[1] += torch.randn(rr.weight[1].shape, generator=g, dtype=dtype) * eps
    return trainer, rollout


def _rollout(model):
    eng = XTRolloutEngine(model)
    return eng.generate(RolloutRequest(prompts=PROMPTS, n=2, seed=11, record_experts=True,
                                       sampling=SamplingParams(max_new_tokens=8, temperature=1.0)))


def _batch(res, replay: bool):
    s = res.samples
    return pack_samples([x.prompt_ids for x in s], [x.response_ids for x in s],
                        routed_experts=[x.routed_experts.to_tensor() for x in s] if replay else None)


def _per_sample(lp, res):
    out, at = [], 0
    for x in res.samples:
        n = len(x.prompt_ids) + len(x.response_ids)
        out.append(lp[at + len(x.prompt_ids) - 1: at + n - 1])
        at += n
    return out


def _max_gap(trainer, res, batch):
    lp = forward_log_probs(Engine(trainer, torch.optim.SGD(trainer.parameters(), lr=0.0)), [batch])[0]
    return max(float((torch.tensor(x.log_probs) - t).abs().max()) for x, t in zip(res.samples, _per_sample(lp, res)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3"])
def test_replay_makes_trainer_log_probs_equal_the_rollouts(arch, dtype):
    trainer, rollout_model = _trainer_and_rollout_models(arch, dtype)
    res = _rollout(rollout_model)
    L = len(decoder_routers(trainer))
    for x in res.samples:
        assert x.routed_experts.shape == [L, len(x.prompt_ids) + len(x.response_ids), trainer.config.num_experts_per_tok]
    hook = enable_routing_replay(trainer)
    try:
        with_replay = _max_gap(trainer, res, _batch(res, replay=True))
        without = _max_gap(trainer, res, _batch(res, replay=False))
        agree = routing_agreement(trainer, _batch(res, replay=True))
    finally:
        hook.remove()
    print(f"\n{arch} {dtype}: max |trainer - rollout| log-prob with replay {with_replay:.2e}, without {without:.2e}; "
          f"expert slots that differ without replay: {agree['routing_mismatch_frac']:.3f}")
    assert with_replay <= REPLAY_TOL[dtype]
    assert 0 < agree["routing_mismatch_frac"] < 0.5 and agree["routing_mismatch_tokens_frac"] > 0
    assert without > 1e-2
    assert all(r.replay_topk_ids is None for r in decoder_routers(trainer))  # removed cleanly


def _hand_router_grad(arch, router, x, w, ids, dw):
    """dL/dW of a router by the chain rule written out in float64, from its input ``x [T, D]``, the
    replayed ``ids [T, K]``, its combine weights ``w`` and their gradient ``dw [T, K]``:

    - softmax top-k (renormalised): ``w_k = exp(l_k) / sum_j exp(l_j)`` over the K chosen logits, so
      ``dL/dl_j = w_j (dw_j - sum_k w_k dw_k)``;
    - DeepSeek-V3: ``w_k = c s_k / S`` with ``s = sigmoid(l)``, ``S = sum_j s_j`` over the chosen, so
      ``dL/ds_j = c (dw_j / S - sum_k dw_k s_k / S^2)`` and ``dL/dl_j = dL/ds_j s_j (1 - s_j)``;

    then ``dL/dW = sum_t dL/dl_t x_t^T`` (only the chosen experts' rows get any).
    """
    x, w, dw = x.double(), w.double(), dw.double()
    logits = x @ router.weight.detach().double().T
    chosen = logits.gather(1, ids)
    if arch == "qwen3_moe":
        dl = w * (dw - (w * dw).sum(-1, keepdim=True))
    else:
        sc = chosen.sigmoid()
        S = sc.sum(-1, keepdim=True)
        c = router.routed_scaling_factor
        dl = c * (dw / S - (dw * sc).sum(-1, keepdim=True) / S ** 2) * sc * (1 - sc)
    full = torch.zeros_like(logits).scatter_add(1, ids, dl)
    return full.T @ x


@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3"])
def test_router_gradient_under_replay_equals_the_hand_chain_rule(arch):
    model, rollout_model = _trainer_and_rollout_models(arch, torch.float64)
    res = _rollout(rollout_model)
    batch = _batch(res, replay=True)
    labels = batch["labels"]
    adv = torch.randn(labels.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    keep = labels != -100
    routers = decoder_routers(model)
    seen = {}

    def capture(l):
        def hook(mod, args, out):
            out.topk_weights.retain_grad()
            seen[l] = (args[0].detach(), out)
        return hook

    handles = [r.register_forward_hook(capture(l)) for l, r in enumerate(routers)]
    replay = enable_routing_replay(model)
    try:
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       cu_seqlens=batch["cu_seqlens"], max_seqlen=batch["max_seqlen"],
                       routed_experts=batch["routed_experts"]).logits
        lp = torch.log_softmax(logits, -1).gather(1, labels.clamp(min=0)[:, None])[:, 0]
        (adv * lp)[keep].sum().backward()
    finally:
        replay.remove()
        for h in handles:
            h.remove()
    for l, r in enumerate(routers):
        x, out = seen[l]
        assert torch.equal(out.topk_ids, batch["routed_experts"][l])  # the replayed experts were used
        want = _hand_router_grad(arch, r, x, out.topk_weights.detach(), out.topk_ids, out.topk_weights.grad)
        got = r.weight.grad
        assert float(got.abs().max()) > 1e-3
        assert float((got.double() - want).norm() / want.norm()) <= 1e-5
