"""Ulysses sequence parallelism inside the RL trainer: 2 gloo ranks with ``parallel.sp_size = 2``
(each micro-batch split over both, `xt.rl.seq_parallel`) give the one-process step.

One RL step of fixed rollouts (`rl_sp_cases`: 2 updates of 2 micro-batches, old log-probs from a
forward, a reference engine for the KL, rollout log-probs for the mismatch metrics/corrections)
through `PolicyTrainer.train`: every logged metric and the updated weights within 1e-5 (fp32,
docs/architecture.md, Numerics), for token_mean, seq_mean_token_mean (with sequence-level TIS and
masking) and GSPO, KL on; `sequence_kl` (``rl.kl_in = "reward"``) per sample; and a Qwen3-MoE
with routing replay (its agreement metrics counted over the whole micro-batch, the router's aux loss
off: it is normalised per SP slice); and 4 ranks as 2 data-parallel groups x 2 SP ranks.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from xt.rl.config import MismatchConfig, RLConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "parallel"))
from parallel_harness import shared_pool  # noqa: E402

from rl_sp_cases import LENS, _model, one_process  # noqa: E402

TOL = 1e-5

CASES = {
    "ppo-token_mean-k3-tis_token": RLConfig(kl_coef=0.1, kl_estimator="k3", entropy_metric=True,
                                            mismatch=MismatchConfig(tis="token", tis_cap=1.5)),
    "dapo-seq_mean-k2-tis_seq-mask_seq": RLConfig(
        aggregation="seq_mean_token_mean", clip_eps_high=0.28, dual_clip=3.0, kl_coef=0.05, kl_estimator="k2",
        mismatch=MismatchConfig(tis="sequence", tis_cap=2.0, mask="sequence", mask_low=0.3, mask_high=3.0)),
    "gspo-seq_mean-k1": RLConfig(policy_loss="gspo", aggregation="seq_mean_token_mean", clip_eps_low=0.05,
                                 clip_eps_high=0.08, kl_coef=0.2, kl_estimator="k1"),
    "gspo-constant-k3": RLConfig(policy_loss="gspo", aggregation="constant", max_response_tokens=8, kl_coef=0.1),
}


class _FakeSP:
    """SP rank `rank` of `size` without torch.distributed (`SequenceShards` reads only these)."""

    def __init__(self, rank: int, size: int) -> None:
        from types import SimpleNamespace

        from xt.parallel.sp_batch import shard_batch_for_sp
        self.sp_rank, self.sp_size, self.meshes = rank, size, SimpleNamespace(sp_group=None)
        self.shard_batch = lambda b: shard_batch_for_sp(b, rank, size)


@pytest.mark.parametrize("size", [2, 3])
def test_slices_put_back_together_are_the_micro_batch(size):
    from xt.rl.batch import SP_TOKENS, pack_samples, sequence_index
    from xt.rl.seq_parallel import SequenceShards
    g = torch.Generator().manual_seed(0)
    prompts, responses = [[1, 2, 3], [4], [5, 6]], [[7, 8], [9, 10, 11], [12, 13]]
    experts = [torch.randint(0, 8, (2, len(p) + len(r), 2), generator=g) for p, r in zip(prompts, responses)]
    mb = pack_samples(prompts, responses, advantages=[0.5, -1.0, 2.0], rollout_log_probs=[[-1.0, -2.0], [-3.0] * 3, [-4.0, -5.0]],
                      keep=[True, False, True], routed_experts=experts)
    T = mb["input_ids"].numel()  # 13 tokens: padded to 14 (size 2) or 15 (size 3)
    shards = [SequenceShards(_FakeSP(r, size)) for r in range(size)]
    parts = [sp.shard(mb) for sp in shards]
    assert all(p[SP_TOKENS] == T and torch.equal(p["cu_seqlens"][:4], mb["cu_seqlens"]) for p in parts)
    for key in ("input_ids", "labels", "advantages", "rollout_log_probs", "loss_mask"):
        assert torch.equal(torch.cat([p[key] for p in parts])[:T], mb[key]), key
    experts_cat = torch.cat([p["routed_experts"] for p in parts], dim=1)
    assert torch.equal(experts_cat[:, :T], mb["routed_experts"])
    assert experts_cat.shape[1] > T and (experts_cat[:, T:] == torch.tensor([0, 1])).all()  # distinct on padding
    seq, d = sequence_index(mb)
    got = [sp.sequence_index(p) for sp, p in zip(shards, parts)]
    assert all(n == d + 1 for _, n in got)  # the padding document
    assert torch.equal(torch.cat([s for s, _ in got])[:T], seq) and torch.cat([s for s, _ in got])[T:].eq(d).all()
    real = torch.cat([sp.real_tokens(p) for sp, p in zip(shards, parts)])
    assert real.sum() == T and real[:T].all()
    with pytest.raises(ValueError, match="parallel.sp_size"):
        shards[0].sequence_index(mb)  # a whole micro-batch is not a slice


def test_sequence_shards_needs_an_sp_layout():
    from xt.rl.seq_parallel import SequenceShards, sequence_shards
    assert sequence_shards(None) is None and sequence_shards(_FakeSP(0, 1)) is None
    with pytest.raises(ValueError, match="parallel.sp_size > 1"):
        SequenceShards(_FakeSP(0, 1))


@pytest.fixture(scope="module")
def pool2():
    """The session's gloo pool of 2 ranks (`parallel_harness.shared_pool`: the one tests/parallel
    uses, so a full run starts it once; its meshes are kept under this file's own keys)."""
    return shared_pool(2)


@pytest.fixture(scope="module")
def pool4():
    """The session's gloo pool of 4 ranks (as `pool2`)."""
    return shared_pool(4)


def _spec(rl: RLConfig, **kw) -> dict:
    return dict(fn="rl_sp_cases:run_sp", sys_path=[str(Path(__file__).resolve().parent)], rl=rl, seed=3, lr=0.5,
                sp=2, **kw)


def _same(got: dict, want: dict, spec: dict) -> None:
    assert got["weight_version"] == want["weight_version"] == 2
    assert got["metrics"].keys() == want["metrics"].keys()
    for k, v in want["metrics"].items():
        assert (v is None and got["metrics"][k] is None) or got["metrics"][k] == pytest.approx(v, rel=TOL, abs=TOL), k
    wa, wb = want["weights"], got["weights"]
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        assert torch.allclose(wb[k], wa[k], rtol=0, atol=TOL), (k, float((wb[k] - wa[k]).abs().max()))
    start = {k: p.detach() for k, p in _model(spec).named_parameters()}
    assert max(float((wa[k] - start[k]).abs().max()) for k in wa) > 1e-3  # the step did train


@pytest.mark.dist
@pytest.mark.parametrize("name", list(CASES))
def test_sp2_trainer_step_equals_one_process(pool2, name):
    spec = _spec(CASES[name])
    want, got = one_process(spec), pool2.run(spec)
    _same(got, want, spec)
    m = want["metrics"]
    assert m["ratio_abs_dev"] > 0.01 and m["kl"] != 0 and m["trainer_tokens"] == sum(map(sum, LENS))
    if CASES[name].mismatch.enabled:
        assert 0 < m["tis_capped_frac"] < 1 or 0 < m["mismatch_masked_frac"] < 1


@pytest.mark.dist
def test_sp2_sequence_kl_equals_one_process(pool2):
    spec = _spec(RLConfig(kl_coef=0.1, kl_in="reward", kl_estimator="k3"), sequence_kl=True)
    want, got = one_process(spec), pool2.run(spec)
    assert len(got["kl"]) == len(want["kl"]) == len(LENS) and min(want["kl"]) > 0
    assert got["kl"] == pytest.approx(want["kl"], rel=TOL, abs=TOL)
    _same(got, want, spec)


@pytest.mark.dist
def test_sp2_moe_with_routing_replay_equals_one_process(pool2):
    spec = _spec(RLConfig(aggregation="seq_mean_token_mean"), moe=True)
    want, got = one_process(spec), pool2.run(spec)
    assert 0 < want["metrics"]["routing_mismatch_frac"] < 1
    _same(got, want, spec)


@pytest.mark.dist
def test_dp2_x_sp2_trainer_step_equals_one_process(pool4):
    """4 ranks = 2 data-parallel groups x 2 SP ranks: each group its share of every update's 3
    samples (1 and 2, one micro-batch each), each share split over its SP pair."""
    spec = _spec(CASES["dapo-seq_mean-k2-tis_seq-mask_seq"], micro=1)
    want, got = one_process(spec), pool4.run(spec)
    _same(got, want, spec)
    assert want["metrics"]["trainer_tokens"] == sum(map(sum, LENS))
