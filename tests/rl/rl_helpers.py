"""Helpers of the xt.rl tests: a tiny XT Qwen3 policy, random rollouts packed as RL micro-batches,
and the policy objectives written out by hand in float64 (loops over samples and tokens, full
logits + log_softmax), independent of xt.rl's code.

A uniquely named module (not conftest) so that other test folders' helpers never shadow it."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from xt.rl.batch import pack_samples
from xt.rl.config import RLConfig

torch.set_num_threads(1)
VOCAB = 64


def tiny_qwen3(seed: int = 0, dtype: torch.dtype = torch.float64, moe: bool = False, aux_coef: float = 0.05):
    """A 1-layer XT Qwen3 (or Qwen3-MoE, router aux loss coefficient `aux_coef`) policy, random init."""
    from xt.models.qwen3.config import Qwen3Config
    from xt.models.qwen3.model import Qwen3ForCausalLM

    extra = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, norm_topk_prob=True,
                 router_aux_loss_coef=aux_coef) if moe else {}
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, initializer_range=0.3, **extra)
    return Qwen3ForCausalLM(cfg).to(dtype)


@dataclass
class Rollouts:
    """N samples: token lists, one advantage each, per-response-token old/ref/rollout log-probs."""
    prompts: list
    responses: list
    advantages: list
    old: list
    ref: list
    rollout: list
    keep: list

    def batch(self, idx) -> dict:
        """The RL micro-batch of samples ``idx``."""
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return pack_samples(pick(self.prompts), pick(self.responses), advantages=pick(self.advantages),
                            old_log_probs=pick(self.old), ref_log_probs=pick(self.ref),
                            rollout_log_probs=pick(self.rollout), keep=pick(self.keep))


def response_log_probs(model, prompts, responses, temperature: float = 1.0) -> list[torch.Tensor]:
    """Per sample, ``log π(response_j | prefix)`` in float64 from the model's full logits (each
    document run alone; differentiable)."""
    out = []
    for p, r in zip(prompts, responses):
        ids = torch.tensor(list(p) + list(r))
        logits = model(input_ids=ids, position_ids=torch.arange(len(ids))).logits.double() / temperature
        logp = torch.log_softmax(logits, -1)
        pos = torch.arange(len(p) - 1, len(ids) - 1)
        out.append(logp[pos, ids[pos + 1]])
    return out


def random_rollouts(model, seed: int, lens=((3, 5), (2, 3), (4, 6), (1, 4), (3, 2), (2, 7)),
                    temperature: float = 1.0) -> Rollouts:
    """Random samples around the model's own log-probs: old = current + a per-sample offset + noise
    (so ratios fall inside and outside the clip ranges, and one negative-advantage sample has a
    ratio near e^1.6 for the dual clip), rollout = old + noise, ref = current + noise; sample 4 is
    masked out (``keep``)."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, VOCAB, (p,), generator=g).tolist() for p, _ in lens]
    responses = [torch.randint(0, VOCAB, (r,), generator=g).tolist() for _, r in lens]
    with torch.no_grad():
        cur = response_log_probs(model, prompts, responses, temperature)
    adv = [1.0, -0.7, 0.4, -1.2, 0.9, -0.3][:len(lens)]
    offsets = [0.25, -0.05, -0.3, 1.6, 0.0, 0.1][:len(lens)]
    noise = lambda n, s: (torch.randn(n, generator=g, dtype=torch.float64) * s)  # noqa: E731
    old = [(c - o + noise(len(c), 0.2)).float().tolist() for c, o in zip(cur, offsets)]
    rollout = [(torch.tensor(o, dtype=torch.float64) + noise(len(o), 0.6)).float().tolist() for o in old]
    ref = [(c + noise(len(c), 0.5)).float().tolist() for c in cur]
    keep = [i != 4 for i in range(len(lens))]
    return Rollouts(prompts, responses, adv, old, ref, rollout, keep)


def _k(logp, ref, estimator):
    x = ref - logp
    return {"k1": -x, "k2": x * x / 2, "k3": torch.exp(x) - 1 - x}[estimator]


def _surrogate(ratio, a, cfg: RLConfig):
    lo, hi = 1 - cfg.clip_eps_low, 1 + cfg.clip_eps_high
    loss = torch.maximum(-a * ratio, -a * torch.clamp(ratio, lo, hi))
    if cfg.dual_clip and a < 0:
        loss = torch.minimum(loss, torch.tensor(-a * cfg.dual_clip, dtype=loss.dtype))
    return loss


def hand_objective(model, ro: Rollouts, cfg: RLConfig) -> torch.Tensor:
    """The step objective of `cfg` over all samples, written out (float64, differentiable)."""
    logps = response_log_probs(model, ro.prompts, ro.responses, cfg.temperature)
    kept = [i for i in range(len(logps)) if ro.keep[i] and len(ro.responses[i])]
    n_tok = sum(len(ro.responses[i]) for i in kept)
    terms = []  # per kept sample: list of per-token losses
    for i in kept:
        lp = logps[i]
        old = torch.tensor(ro.old[i], dtype=torch.float64)
        rollout = torch.tensor(ro.rollout[i], dtype=torch.float64)
        ref = torch.tensor(ro.ref[i], dtype=torch.float64)
        a, n = ro.advantages[i], len(lp)
        if cfg.policy_loss == "gspo":
            s = torch.exp((lp - old).mean())
            pg = [_surrogate(s, a, cfg)] * n
        else:
            pg = [_surrogate(torch.exp(lp[j] - old[j]), a, cfg) for j in range(n)]
        mm = cfg.mismatch
        rho = [math.exp(float(old[j] - rollout[j])) for j in range(n)]
        w = [1.0] * n
        if mm.tis == "token":
            w = [min(r, mm.tis_cap) for r in rho]
        elif mm.tis == "sequence":
            w = [min(math.prod(rho), mm.tis_cap)] * n
        if mm.mask == "token":
            w = [wj if mm.mask_low <= r <= mm.mask_high else 0.0 for wj, r in zip(w, rho)]
        elif mm.mask == "sequence":
            gm = math.exp(sum(math.log(r) for r in rho) / n)
            w = [wj if mm.mask_low <= gm <= mm.mask_high else 0.0 for wj in w]
        row = [w[j] * pg[j] for j in range(n)]
        if cfg.kl_coef and cfg.kl_in == "loss":
            row = [row[j] + cfg.kl_coef * _k(lp[j], ref[j], cfg.kl_estimator) for j in range(n)]
        terms.append(row)
    if cfg.aggregation == "token_mean":
        return sum(sum(row) for row in terms) / n_tok
    if cfg.aggregation == "seq_mean_token_mean":
        return sum(sum(row) / len(row) for row in terms) / len(terms)
    return sum(sum(row) for row in terms) / (len(terms) * cfg.max_response_tokens)


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64 (docs/architecture.md, Numerics)."""
    a, b = torch.as_tensor(a).detach().double(), torch.as_tensor(b).detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def tiny_moe(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A 2-MoE-layer XT Qwen3-MoE (E=8, K=2) or DeepSeek-V3 (1 dense + 2 MoE layers, E=8 in 4 groups,
    top-2 groups, K=3, a shared expert), random init."""
    torch.manual_seed(seed)
    if arch == "qwen3_moe":
        from xt.models.qwen3.config import Qwen3Config
        from xt.models.qwen3.model import Qwen3ForCausalLM
        cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, initializer_range=0.3,
                          num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, norm_topk_prob=True,
                          router_aux_loss_coef=0.0)
        return Qwen3ForCausalLM(cfg).to(dtype)
    from xt.models.deepseek_v3.config import DeepseekV3Config
    from xt.models.deepseek_v3.model import DeepseekV3ForCausalLM
    cfg = DeepseekV3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                           num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1,
                           n_routed_experts=8, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, v_head_dim=12,
                           qk_nope_head_dim=8, n_group=4, topk_group=2, num_experts_per_tok=3,
                           first_k_dense_replace=1, max_position_embeddings=64, routed_scaling_factor=2.5)
    return DeepseekV3ForCausalLM(cfg, init_std=0.3).to(dtype)
