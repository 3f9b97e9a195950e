"""`xt.rl.losses.PolicyLoss` through the `Engine` on a tiny XT Qwen3 policy (float64 weights):

- the objective and every gradient equal autograd of the objective written out by hand in float64
  (`rl_helpers.hand_objective`: full logits, loops over samples and tokens), for each policy loss,
  aggregation, KL estimator and mismatch correction;
- splitting the same samples over micro-batches, or over 2 gloo ranks, changes nothing;
- an SGD step through the engine moves the weights by the hand-computed gradient;
- the model's auxiliary loss is added as the engine's default adds it.

Log-probs come out of `token_log_probs` in float32 (docs/contracts.md, Kernels API), so the
comparisons with the float64 formula use the fp32 bound 1e-5 (docs/architecture.md, Numerics).
"""
from __future__ import annotations

import copy
import json

import msgspec
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from xt.core.engine import Engine
from xt.rl.config import MismatchConfig, RLConfig
from xt.rl.losses import PolicyLoss, forward_log_probs

from rl_helpers import grads, hand_objective, random_rollouts, rel_err, response_log_probs, tiny_qwen3

TOL = 1e-5
SPLIT_TOL = 1e-6
CASES = {
    "ppo-token_mean": RLConfig(),
    "dapo-dual-seq_mean-k3": RLConfig(clip_eps_high=0.28, dual_clip=3.0, aggregation="seq_mean_token_mean",
                                      kl_coef=0.1, kl_estimator="k3"),
    "gspo-seq_mean-k2": RLConfig(policy_loss="gspo", aggregation="seq_mean_token_mean", clip_eps_low=0.1,
                                 clip_eps_high=0.15, kl_coef=0.05, kl_estimator="k2"),
    "drgrpo-constant-k1-tis_token-mask_token": RLConfig(
        advantage="dr_grpo", aggregation="constant", max_response_tokens=8, kl_coef=0.2, kl_estimator="k1",
        mismatch=MismatchConfig(tis="token", tis_cap=1.5, mask="token", mask_low=0.4, mask_high=2.5)),
    "ppo-tis_seq-mask_seq-temp0.7": RLConfig(temperature=0.7, mismatch=MismatchConfig(
        tis="sequence", tis_cap=2.0, mask="sequence", mask_low=0.6, mask_high=1.5)),
}
SPLITS = {"one": [[0, 1, 2, 3, 4, 5]], "three": [[0, 1], [2], [3, 4, 5]], "six": [[i] for i in range(6)]}


def _run(model, ro, cfg, split, lr=0.0):
    engine = Engine(model, torch.optim.SGD(model.parameters(), lr=lr or 1.0))
    stats = engine.forward_backward([ro.batch(idx) for idx in split], PolicyLoss(cfg))
    return engine, stats


@pytest.mark.parametrize("case", list(CASES))
def test_objective_and_gradients_equal_the_hand_written_formula(case):
    cfg = CASES[case]
    model = tiny_qwen3()
    ro = random_rollouts(model, seed=1, temperature=cfg.temperature)
    ref = copy.deepcopy(model)
    want = hand_objective(ref, ro, cfg)
    want.backward()
    _, stats = _run(model, ro, cfg, SPLITS["three"])
    assert float(stats.objective) == pytest.approx(float(want.detach()), rel=TOL)
    got, exp = grads(model), grads(ref)
    assert set(got) == set(exp) and exp
    for name in exp:
        assert rel_err(got[name], exp[name]) <= TOL, name
    m = stats.loss_metrics
    kl = cfg.kl_coef if cfg.kl_in == "loss" else 0.0
    assert (kl == 0) == (float(m["policy_loss"]) == pytest.approx(float(stats.objective), rel=1e-6))
    assert 0 <= float(m["clip_frac_low"]) + float(m["clip_frac_high"]) < 1 and float(m["entropy"]) > 0


def test_the_cases_hit_every_branch():
    """The rollouts are built so that both clip sides, the dual clip, the TIS cap and both masks fire."""
    model = tiny_qwen3()
    ro = random_rollouts(model, seed=1)
    seen = {}
    for cfg in CASES.values():
        _, stats = _run(copy.deepcopy(model), ro, cfg, SPLITS["one"])
        for k, v in stats.loss_metrics.items():
            seen[k] = max(seen.get(k, 0.0), float(v))
    for k in ("clip_frac_low", "clip_frac_high", "dual_clip_frac", "tis_capped_frac", "mismatch_masked_frac"):
        assert seen[k] > 0, k


@pytest.mark.parametrize("case", list(CASES))
def test_splitting_over_micro_batches_changes_nothing(case):
    cfg = CASES[case]
    model = tiny_qwen3()
    ro = random_rollouts(model, seed=2, temperature=cfg.temperature)
    results = {}
    for name, split in SPLITS.items():
        m = copy.deepcopy(model)
        _, stats = _run(m, ro, cfg, split)
        results[name] = (stats, grads(m))
    base_stats, base_grads = results["one"]
    for name, (stats, g) in results.items():
        assert float(stats.objective) == pytest.approx(float(base_stats.objective), rel=SPLIT_TOL), name
        for k, v in base_stats.loss_metrics.items():
            assert float(stats.loss_metrics[k]) == pytest.approx(float(v), rel=SPLIT_TOL, abs=1e-12), (name, k)
        for p in base_grads:
            assert rel_err(g[p], base_grads[p]) <= SPLIT_TOL, (name, p)


def test_an_sgd_step_moves_the_weights_by_the_hand_gradient():
    cfg = CASES["dapo-dual-seq_mean-k3"]
    model = tiny_qwen3()
    ro = random_rollouts(model, seed=3)
    ref = copy.deepcopy(model)
    hand_objective(ref, ro, cfg).backward()
    lr = 0.05
    expected = {n: (p - lr * p.grad).detach() for n, p in ref.named_parameters()}
    engine, _ = _run(model, ro, cfg, SPLITS["three"], lr=lr)
    opt = engine.optim_step()
    assert not opt.skipped and engine.step == 1
    for n, p in model.named_parameters():
        delta_got, delta_want = p.detach() - dict(ref.named_parameters())[n].detach(), expected[n] - dict(ref.named_parameters())[n].detach()
        assert rel_err(delta_got, delta_want) <= TOL, n


def test_moe_aux_loss_is_added_like_the_default_objective():
    model = tiny_qwen3(moe=True)
    ro = random_rollouts(model, seed=4)
    _, stats = _run(model, ro, RLConfig(), SPLITS["three"])
    assert stats.aux_loss is not None and float(stats.aux_loss) > 0
    assert float(stats.objective) == pytest.approx(float(stats.loss_metrics["policy_loss"] + stats.aux_loss), rel=1e-6)


def test_missing_batch_keys_name_the_config_field():
    model = tiny_qwen3()
    ro = random_rollouts(model, seed=5)
    batch = ro.batch([0, 1])
    del batch["ref_log_probs"], batch["rollout_log_probs"]
    engine = Engine(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(KeyError, match="ref_log_probs.*rl.kl_coef"):
        engine.forward_backward([batch], PolicyLoss(RLConfig(kl_coef=0.1)))
    with pytest.raises(KeyError, match="rollout_log_probs.*rl.mismatch"):
        engine.forward_backward([batch], PolicyLoss(RLConfig(mismatch=MismatchConfig(tis="token"))))
    on_policy = {k: v for k, v in batch.items() if k != "old_log_probs"}
    stats = engine.forward_backward([on_policy], PolicyLoss(RLConfig()))
    assert float(stats.loss_metrics["ratio_mean"]) == pytest.approx(1.0) and float(stats.loss_metrics["clip_frac_low"]) == 0


def test_forward_log_probs_are_the_training_forwards():
    """old_log_probs from `forward_log_probs` before the update give ratio 1 on every token."""
    model = tiny_qwen3()
    ro = random_rollouts(model, seed=7, temperature=0.8)
    engine = Engine(model, torch.optim.SGD(model.parameters(), lr=0.1))
    mbs = [ro.batch(idx) for idx in SPLITS["three"]]
    for mb, lp in zip(mbs, forward_log_probs(engine, mbs, temperature=0.8)):
        assert lp.dtype == torch.float32 and not lp.requires_grad
        mb["old_log_probs"] = lp
    stats = engine.forward_backward(mbs, PolicyLoss(RLConfig(temperature=0.8)))
    m = stats.loss_metrics
    assert float(m["ratio_abs_dev"]) <= 1e-6 and float(m["clip_frac_low"]) == float(m["clip_frac_high"]) == 0
    labels = torch.cat([mb["labels"] for mb in mbs])
    hand = torch.cat(response_log_probs(model, ro.prompts, ro.responses, 0.8))
    got = torch.cat([mb["old_log_probs"] for mb in mbs])[labels != -100]
    order = [i for split in SPLITS["three"] for i in split]
    assert order == list(range(6)) and rel_err(got, hand.detach()) <= TOL


# -- 2 gloo ranks -------------------------------------------------------------------------------
RANK_SPLITS = {0: [[0, 1], [2]], 1: [[3, 4, 5]]}


def _rank_worker(rank, tmp):
    from xtcore_gloo import GlooDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=2)
    try:
        out = {}
        for name, cfg in CASES.items():
            model = tiny_qwen3()
            ro = random_rollouts(model, seed=6, temperature=cfg.temperature)
            engine = Engine(model, torch.optim.SGD(model.parameters(), lr=1.0), dist=GlooDataParallel())
            stats = engine.forward_backward([ro.batch(idx) for idx in RANK_SPLITS[rank]], PolicyLoss(cfg))
            g = grads(model)
            for t in g.values():
                dist.all_reduce(t)
            out[name] = {"objective": float(stats.objective),
                         "metrics": {k: float(v) for k, v in stats.loss_metrics.items()},
                         "grads": {k: v.tolist() for k, v in g.items()}}
        if rank == 0:
            with open(f"{tmp}/ranks.json", "w") as f:
                json.dump(out, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
def test_two_gloo_ranks_equal_one_process(tmp_path):
    mp.spawn(_rank_worker, args=(str(tmp_path),), nprocs=2, join=True)
    ranks = json.loads((tmp_path / "ranks.json").read_text())
    for name, cfg in CASES.items():
        model = tiny_qwen3()
        ro = random_rollouts(model, seed=6, temperature=cfg.temperature)
        _, stats = _run(model, ro, cfg, SPLITS["one"])
        got = ranks[name]
        assert got["objective"] == pytest.approx(float(stats.objective), rel=SPLIT_TOL), name
        for k, v in stats.loss_metrics.items():
            assert got["metrics"][k] == pytest.approx(float(v), rel=SPLIT_TOL, abs=1e-12), (name, k)
        for p, g in grads(model).items():
            assert rel_err(torch.tensor(got["grads"][p], dtype=torch.float64), g) <= SPLIT_TOL, (name, p)


def test_configs_of_the_cases_round_trip():
    for cfg in CASES.values():
        assert msgspec.convert(msgspec.to_builtins(cfg), RLConfig) == cfg
