"""DeepSeek-V3 specifics: the sigmoid group-limited router against HF's, the auxiliary-loss-free bias
rule, the sequence-wise balance loss and multi-token prediction against references built from HF
modules."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xt.models.deepseek_v3.sigmoid_router import SigmoidGroupRouter, aux_free_bias_update, sequence_balance_loss
from xt.models.deepseek_v3 import DeepseekV3Config, DeepseekV3ForCausalLM
from xt.models.deepseek_v3.state_dict import hf_to_xt, xt_to_hf
from zoo_helpers import hf_config, hf_model, pack, random_docs, rel_err


def _hf_router(cfg):
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

    r = DeepseekV3TopkRouter(cfg)
    with torch.no_grad():
        r.weight.normal_(0, 0.3)
        r.e_score_correction_bias.normal_(0, 0.1)
    return r


def _ours_like(hf_r, cfg) -> SigmoidGroupRouter:
    ours = SigmoidGroupRouter(cfg.hidden_size, cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.n_group,
                              cfg.topk_group, cfg.routed_scaling_factor, cfg.norm_topk_prob)
    ours.load_state_dict(hf_r.state_dict())
    return ours


@pytest.mark.parametrize("n_group,topk_group,norm", [(4, 2, True), (1, 1, True), (8, 3, False)])
def test_router_matches_hf(n_group, topk_group, norm):
    cfg = hf_config("deepseek_v3")
    cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group = 16, 4, n_group, topk_group
    cfg.norm_topk_prob = norm
    hf_r = _hf_router(cfg)
    ours = _ours_like(hf_r, cfg)
    x = torch.randn(64, cfg.hidden_size)
    _, ref_w, ref_ids = hf_r(x)
    out = ours(x)
    ref_ids, order = ref_ids.sort(dim=-1)
    ids, order2 = out.topk_ids.sort(dim=-1)
    assert torch.equal(ids, ref_ids)
    assert rel_err(out.topk_weights.gather(1, order2), ref_w.gather(1, order)) <= 1e-6
    if n_group > 1:  # every token's experts come from at most topk_group groups
        groups = ids // (16 // n_group)
        assert all(len(set(row)) <= topk_group for row in groups.tolist())


def test_bias_steers_selection_not_weights():
    cfg = hf_config("deepseek_v3")
    hf_r = _hf_router(cfg)
    ours = _ours_like(hf_r, cfg)
    x = torch.randn(32, cfg.hidden_size)
    with torch.no_grad():
        ours.e_score_correction_bias.zero_()
        ours.e_score_correction_bias[5] = 10.0  # expert 5 always chosen
    out = ours(x)
    assert bool((out.topk_ids == 5).any(dim=1).all())
    s = torch.sigmoid(x @ ours.weight.t())
    w = s.gather(1, out.topk_ids)
    w = w / w.sum(-1, keepdim=True) * cfg.routed_scaling_factor
    assert rel_err(out.topk_weights, w) <= 1e-6


def _captured_gate_inputs(model):
    seen = []
    hooks = [r.register_forward_hook(lambda m, inp, out: seen.append((m, inp[0].detach()))) for r in model.routers()]
    return seen, hooks


def test_aux_loss_free_bias_update_counts_global_batch(tmp_path):
    hf = hf_model("deepseek_v3")
    cfg = DeepseekV3Config.from_hf(hf.config.to_dict(), bias_update_speed=0.01)
    model = DeepseekV3ForCausalLM(cfg, attn_backend="sdpa")
    model.load_state_dict(hf_to_xt(hf.state_dict(), cfg))
    model.train()
    seen, hooks = _captured_gate_inputs(model)
    for seed in (1, 2):  # two micro-batches of one step
        model(**pack(random_docs([9, 5], seed=seed)))
    for h in hooks:
        h.remove()
    routers = model.routers()
    before = [r.e_score_correction_bias.clone() for r in routers]
    # reference counts: HF's router applied to the same gate inputs
    ref_load = torch.zeros(len(routers), cfg.n_routed_experts)
    for mod, x in seen:
        i = routers.index(mod)
        hf_r = hf.model.layers[cfg.first_k_dense_replace + i].mlp.gate
        ids = hf_r(x)[2]
        ref_load[i] += torch.bincount(ids.reshape(-1), minlength=cfg.n_routed_experts).float()
    assert torch.equal(model.expert_load(), ref_load)
    metrics = model.post_optimizer_step()
    for r, b, load in zip(routers, before, ref_load):
        expected = b + 0.01 * torch.sign(load.mean() - load)
        assert torch.equal(r.e_score_correction_bias, expected)
    assert torch.equal(model.expert_load(), torch.zeros_like(ref_load))  # reset after the step
    assert rel_err(metrics["expert_load_max_violation"], ref_load.max(1).values / ref_load.mean(1) - 1) <= 1e-6
    # a global load (e.g. summed over data-parallel ranks) given explicitly wins over local counts
    glob = torch.arange(cfg.n_routed_experts, dtype=torch.float32).repeat(len(routers), 1)
    now = [r.e_score_correction_bias.clone() for r in routers]
    model.post_optimizer_step(glob)
    for r, b in zip(routers, now):
        assert torch.equal(r.e_score_correction_bias, aux_free_bias_update(b, glob[0], 0.01))
    with pytest.raises(ValueError, match="expert_load must be"):
        model.post_optimizer_step(glob[:, :3])


def _seq_loss_reference(scores, ids, doc_ids, K):
    """Eqs. 17-20 of the DeepSeek-V3 report, one document at a time, float64."""
    E = scores.shape[1]
    losses = []
    for d in doc_ids.unique().tolist():
        s, i = scores[doc_ids == d].double(), ids[doc_ids == d]
        T = s.shape[0]
        f = torch.stack([(i == e).any(dim=1).double().sum() for e in range(E)]) * E / (K * T)
        p = (s / s.sum(-1, keepdim=True)).mean(0)
        losses.append((f * p).sum())
    return torch.stack(losses).mean()


def test_sequence_balance_loss_matches_definition():
    T, E, K = 23, 8, 3
    scores = torch.rand(T, E)
    ids = torch.stack([torch.randperm(E)[:K] for _ in range(T)])
    doc_ids = torch.tensor([0] * 7 + [1] * 12 + [2] * 4)
    got = sequence_balance_loss(scores, ids, doc_ids, 3)
    assert rel_err(got, _seq_loss_reference(scores, ids, doc_ids, K)) <= 1e-6


def test_model_sequence_aux_loss_is_coef_times_sum_over_layers():
    hf = hf_model("deepseek_v3")
    cfg = DeepseekV3Config.from_hf(hf.config.to_dict(), seq_aux_loss_coef=0.1)
    model = DeepseekV3ForCausalLM(cfg, attn_backend="sdpa")
    model.load_state_dict(hf_to_xt(hf.state_dict(), cfg))
    seen, hooks = _captured_gate_inputs(model)
    batch = pack(random_docs([9, 5, 7], seed=4))
    out = model(**batch)
    for h in hooks:
        h.remove()
    doc_ids = torch.repeat_interleave(torch.arange(3), torch.tensor([9, 5, 7]))
    ref = 0.0
    for mod, x in seen:
        hf_r = hf.model.layers[cfg.first_k_dense_replace + model.routers().index(mod)].mlp.gate
        logits, _, ids = hf_r(x)
        ref = ref + _seq_loss_reference(logits.sigmoid(), ids, doc_ids, cfg.num_experts_per_tok)
    assert rel_err(out.aux_loss, 0.1 * ref) <= 1e-6
    out.aux_loss.backward()
    assert all(r.weight.grad is not None and r.weight.grad.abs().sum() > 0 for r in model.routers())


def test_mtp_loss_matches_reference_from_hf_modules():
    from transformers import AutoModelForCausalLM
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3DecoderLayer, DeepseekV3RMSNorm

    hf = hf_model("deepseek_v3")
    hcfg = hf.config
    cfg = DeepseekV3Config.from_hf(hcfg.to_dict(), mtp_layers=1, mtp_loss_weight=0.3)
    model = DeepseekV3ForCausalLM(cfg, attn_backend="sdpa").eval()
    sd = hf_to_xt(hf.state_dict(), cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.startswith("mtp.0.") for k in missing)
    with torch.no_grad():
        for n, p in model.mtp.named_parameters():
            if n.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    L = hcfg.num_hidden_layers
    hub = xt_to_hf(model.state_dict(), cfg)
    assert f"model.layers.{L}.eh_proj.weight" in hub and f"model.layers.{L}.shared_head.head.weight" in hub
    # reference MTP block from HF modules, loaded from the hub keys of our MTP layer
    sdpa = AutoModelForCausalLM.from_config(hcfg, attn_implementation="sdpa").eval()
    sdpa.load_state_dict(hf.state_dict())
    block = DeepseekV3DecoderLayer(sdpa.config, L).eval()
    norms = {n: DeepseekV3RMSNorm(hcfg.hidden_size, hcfg.rms_norm_eps) for n in ("enorm", "hnorm", "head_norm")}
    eh = torch.nn.Linear(2 * hcfg.hidden_size, hcfg.hidden_size, bias=False)
    pre = f"model.layers.{L}."
    ours_sd = model.state_dict()  # HF's in-memory expert layout is ours (fused gate_up_proj [E, 2F, D])
    block.load_state_dict({k[len("mtp.0."):]: v for k, v in ours_sd.items() if k.startswith("mtp.0.") and
                           not k[len("mtp.0."):].startswith(("enorm", "hnorm", "eh_proj", "shared_head"))})
    norms["enorm"].weight.data.copy_(hub[pre + "enorm.weight"])
    norms["hnorm"].weight.data.copy_(hub[pre + "hnorm.weight"])
    norms["head_norm"].weight.data.copy_(hub[pre + "shared_head.norm.weight"])
    eh.weight.data.copy_(hub[pre + "eh_proj.weight"])
    docs = random_docs([9, 6, 12], seed=7)
    total, count = 0.0, 0
    with torch.no_grad():
        for d in docs:
            n = len(d)
            h0 = sdpa.model(d[None]).last_hidden_state[:, : n - 1]
            emb = sdpa.model.embed_tokens(d[None, 1:])
            x = eh(torch.cat([norms["enorm"](emb), norms["hnorm"](h0)], -1))
            pos = torch.arange(n - 1)[None]
            h1 = block(x, position_embeddings=sdpa.model.rotary_emb(x, pos), attention_mask=None, position_ids=pos)
            logits = sdpa.lm_head(norms["head_norm"](h1))[0, : n - 2]
            total = total + F.cross_entropy(logits, d[2:], reduction="sum")
            count += n - 2
        out = model(**pack(docs))
    assert rel_err(out.metrics["mtp_loss"], total / count) <= 1e-5
    assert rel_err(out.aux_loss, 0.3 * total / count) <= 1e-5
    assert out.metrics["expert_load"].shape == (L - cfg.first_k_dense_replace + 1, cfg.n_routed_experts)


def test_correction_bias_stays_float32_in_a_bf16_model():
    cfg = DeepseekV3Config.from_hf(hf_config("deepseek_v3").to_dict(), bias_update_speed=1e-3)
    model = DeepseekV3ForCausalLM(cfg, attn_backend="sdpa").to(torch.bfloat16)
    r = model.routers()[0]
    assert r.weight.dtype == torch.bfloat16 and r.e_score_correction_bias.dtype == torch.float32
    with torch.no_grad():
        r.e_score_correction_bias.fill_(0.5)
    load = torch.zeros(len(model.routers()), cfg.n_routed_experts)
    load[:, 0] = 10.0  # expert 0 overloaded, the others under the mean
    model.post_optimizer_step(load)
    # 0.5 - 1e-3 is not representable in bf16 (it would round back to 0.5)
    assert float(r.e_score_correction_bias[0]) == pytest.approx(0.499, abs=1e-7)
    assert float(r.e_score_correction_bias[1]) == pytest.approx(0.501, abs=1e-7)


def test_bias_updates_alone_balance_the_load():
    """With frozen weights and a badly skewed start (two experts favoured by +0.5), repeated
    aux-loss-free updates on the same data move the load back towards uniform."""
    cfg = DeepseekV3Config.from_hf(hf_config("deepseek_v3").to_dict(), bias_update_speed=0.01)
    model = DeepseekV3ForCausalLM(cfg, attn_backend="sdpa").train()
    with torch.no_grad():
        for r in model.routers():
            r.weight.normal_(0, 0.2)
            r.e_score_correction_bias[:2] = 0.5
    batch = pack(random_docs([32, 32], seed=9))
    violations = []
    with torch.no_grad():
        for _ in range(60):
            model(**batch)
            violations.append(model.post_optimizer_step()["expert_load_max_violation"].max().item())
    E, K = cfg.n_routed_experts, cfg.num_experts_per_tok
    # the favoured experts take (nearly) every token: the top violation is close to E/K - 1
    # (how close depends on the random router draw)
    assert violations[0] >= 0.9 * (E / K - 1)
    assert max(violations[-10:]) < 0.25 * violations[0]


def test_fp8_block_quantised_checkpoint_dequantises_like_transformers():
    """DeepSeek-V3 / Kimi K2 hub weights are float8_e4m3 with per-block float32 scales."""
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight

    from xt.models.deepseek_v3.state_dict import dequantize_fp8_blocks

    hf = hf_model("deepseek_v3")
    cfg = DeepseekV3Config.from_hf(hf.config.to_dict())
    hub = xt_to_hf(hf_to_xt(hf.state_dict(), cfg), cfg)  # per-expert hub layout
    block = (8, 16)
    quant = {}
    for k, v in hub.items():
        if k.endswith("proj.weight") and v.dim() == 2:
            n, m = v.shape
            s = torch.rand(-(-n // block[0]), -(-m // block[1])) * 0.01 + 0.001
            full = s.repeat_interleave(block[0], 0)[:n].repeat_interleave(block[1], 1)[:, :m]
            quant[k] = (v / full).clamp(-448, 448).to(torch.float8_e4m3fn)
            quant[k + "_scale_inv"] = s
            got = dequantize_fp8_blocks(quant[k], s, block)
            exact = (quant[k].double() * full.double()).to(torch.bfloat16)  # one rounding, from float64
            assert torch.equal(got, exact), k
            # transformers multiplies in bf16 (two roundings): equal within bf16 precision
            assert rel_err(got, _dequantize_fp8_weight(quant[k], s, list(block), torch.bfloat16)) <= 1e-2, k
        else:
            quant[k] = v
    ours = hf_to_xt(quant, cfg, fp8_block_size=block)
    w = ours["model.layers.1.mlp.experts.gate_up_proj"]
    assert w.dtype == torch.bfloat16 and w.shape == (cfg.n_routed_experts, 2 * cfg.moe_intermediate_size, cfg.hidden_size)
    assert rel_err(w, hf.model.layers[1].mlp.experts.gate_up_proj) < 0.07  # fp8 e4m3 has a 3-bit mantissa
    model = DeepseekV3ForCausalLM(cfg, attn_backend="sdpa")
    model.load_state_dict({k: v.float() for k, v in ours.items()})
    with pytest.raises(ValueError, match="needs scales"):
        dequantize_fp8_blocks(quant["model.layers.0.self_attn.o_proj.weight"], torch.ones(1, 1), block)
