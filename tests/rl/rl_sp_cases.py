"""The RL trainer step of `test_rl_sp.py`, on one process or on every rank of a gloo pool laid out
with Ulysses SP: a tiny fp32 XT Qwen3 (or Qwen3-MoE with routing replay), fixed rollouts
(`rl_helpers.random_rollouts`), `PolicyTrainer.train` (2 updates of ``spec["micro"]`` (2) micro-batches, a reference
engine for the KL) and `PolicyTrainer.sequence_kl`. Both sides build the same thing from the spec,
so the test compares values only.

SGD (an update linear in the gradient) keeps the fp32 bound of 1e-5 on the weights meaningful
(docs/architecture.md, Numerics)."""
from __future__ import annotations

import torch

from xt.core.engine import Engine
from xt.rl.loop.messages import TrainRequest, TrainSample
from xt.rl.loop.trainer import PolicyTrainer

from rl_helpers import random_rollouts, tiny_qwen3

#: odd and even packed lengths (the SP split pads some micro-batches), sequences that straddle the
#: SP slice boundary, one sample masked out (``keep``)
LENS = ((3, 5), (2, 3), (4, 6), (1, 4), (3, 2), (2, 7))
TIMING = ("trainer_s", "trainer_tokens_per_s")


def _model(spec: dict) -> torch.nn.Module:
    # the router's aux loss is normalised per micro-batch (per SP slice): an SP split changes it by design
    return tiny_qwen3(seed=spec["seed"], dtype=torch.float32, moe=spec.get("moe", False), aux_coef=0.0)


def _experts(model, ro, spec) -> list:
    """Per sample ``[L, len(prompt) + len(response), K]`` routed experts: the model's own choices on
    the sample, with every third token's first expert moved by one (so replay matters)."""
    from xt.models.common.routing_replay import record_routing
    from xt.rl.rollout.protocol import IntArray
    out = []
    for p, r in zip(ro.prompts, ro.responses):
        ids = torch.tensor(list(p) + list(r))
        with torch.no_grad(), record_routing(model) as rec:
            model(input_ids=ids, position_ids=torch.arange(len(ids)), return_hidden=True)
        e = rec.call(0).clone()
        e[:, ::3, 0] = (e[:, ::3, 0] + 1) % model.config.num_experts
        e[:, ::3, 0] = torch.where(e[:, ::3, 0] == e[:, ::3, 1], (e[:, ::3, 0] + 1) % model.config.num_experts,
                                   e[:, ::3, 0])
        out.append(IntArray.from_tensor(e))
    return out


def request(spec: dict) -> TrainRequest:
    """The fixed RL step of `spec` (the same on every rank)."""
    model = _model(spec)
    ro = random_rollouts(model, seed=spec["seed"] + 1, lens=LENS, temperature=spec["rl"].temperature)
    experts = _experts(model, ro, spec) if spec.get("moe") else [None] * len(LENS)
    return TrainRequest(step=1, samples=[
        TrainSample(prompt_ids=p, response_ids=r, advantage=a, rollout_log_probs=lp, keep=k, routed_experts=e)
        for p, r, a, lp, k, e in zip(ro.prompts, ro.responses, ro.advantages, ro.rollout, ro.keep, experts)])


def _engines(spec: dict, lay_out):
    model = lay_out(_model(spec))
    engine = Engine(model, torch.optim.SGD(model.parameters(), lr=spec["lr"]), dist=lay_out.dist,
                    max_grad_norm=spec.get("max_grad_norm", 0.0))
    reference = None
    if spec["rl"].kl_coef > 0:
        ref = lay_out(_model(spec))
        reference = Engine(ref, torch.optim.SGD(ref.parameters(), lr=spec["lr"]), dist=lay_out.dist)
        ref.requires_grad_(False)
    return engine, reference


def run_step(spec: dict, lay_out) -> dict:
    """`PolicyTrainer.train` (then `sequence_kl` when ``spec["sequence_kl"]``) on the model laid out by
    ``lay_out(model)`` (whose ``dist`` is the DistContext, None on one process); the metrics without
    timings, the KL list and ``weights`` through ``lay_out.gather(model)``."""
    engine, reference = _engines(spec, lay_out)
    trainer = PolicyTrainer(engine, spec["rl"], updates_per_step=2, micro_batches=spec.get("micro", 2), reference=reference,
                            routing_replay=bool(spec.get("moe")), dist=lay_out.dist)
    req = request(spec)
    res = trainer.train(req)
    out = {"kl": trainer.sequence_kl(req) if spec.get("sequence_kl") else None}  # after: the policy moved
    out["metrics"] = {k: v for k, v in res.metrics.items() if k not in TIMING}
    out["weights"] = lay_out.gather(engine.model)
    out["weight_version"] = res.weight_version
    trainer.close()
    return out


class _OneProcess:
    dist = None

    def __call__(self, model):
        return model

    @staticmethod
    def gather(model):
        return {k: p.detach().clone() for k, p in model.named_parameters()}


def one_process(spec: dict) -> dict:
    """The reference: `run_step` without torch.distributed."""
    return run_step(spec, _OneProcess())


class _Layout:
    """``parallel.sp_size = spec["sp"]`` (plus ``spec["layout"]``) over the pool's world, the meshes
    kept in the pool's state between cases."""

    def __init__(self, spec: dict, state: dict) -> None:
        from xt.parallel import ParallelConfig, build_meshes
        self.cfg = ParallelConfig(sp_size=spec["sp"], param_dtype=None, reduce_dtype=None, **spec.get("layout", {}))
        key = ("rl_sp", spec["sp"], tuple(sorted(spec.get("layout", {}).items())))
        if key not in state.setdefault("meshes", {}):
            c = _model(spec).config
            state["meshes"][key] = build_meshes(self.cfg, "cpu", num_attention_heads=c.num_attention_heads,
                                                num_key_value_heads=c.num_key_value_heads,
                                                num_experts=getattr(c, "num_experts", None) if spec.get("moe") else None)
        self.meshes = state["meshes"][key]
        self.dist = None

    def __call__(self, model):
        from xt.parallel import parallelize
        model, self.dist = parallelize(model, self.cfg, device_type="cpu", meshes=self.meshes)
        return model

    def gather(self, model):
        from xt.parallel.gather import gather_full
        return gather_full(model, self.meshes.ep_group)


def run_sp(spec: dict, state: dict) -> dict:
    """One rank of the SP run of `spec` (collective over the pool's world)."""
    import torch.distributed as dist
    torch.set_num_threads(1)
    out = run_step(spec, _Layout(spec, state))
    dist.barrier()
    return out
