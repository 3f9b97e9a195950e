"""build_model dispatch, flops_per_token against parameter counts, greedy generate against HF."""
from __future__ import annotations

import torch

from qwen3_helpers import VOCAB, hf_and_ours
from xt.models import build_model, generate_no_cache as generate
from xt.models.qwen3 import Qwen3ForCausalLM

CFG = dict(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=3, num_attention_heads=4,
           num_key_value_heads=2, head_dim=4, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=8,
           decoder_sparse_step=1, mlp_only_layers=[1])


def test_build_model_by_architecture_and_type(tmp_path):
    m = build_model(dict(CFG, architectures=["Qwen3MoeForCausalLM"]))
    assert isinstance(m, Qwen3ForCausalLM) and m.config.is_moe
    assert [layer.is_moe for layer in m.model.layers] == [True, False, True]
    d = build_model(dict(CFG, model_type="qwen3", num_experts=0), dtype=torch.bfloat16)
    assert not d.config.is_moe and d.lm_head.weight.dtype == torch.bfloat16
    meta = build_model(dict(CFG, model_type="qwen3_moe"), device="meta")
    assert meta.lm_head.weight.is_meta
    assert build_model(m.config).config == m.config


def test_flops_per_token_counts_active_params():
    m = build_model(dict(CFG, model_type="qwen3_moe", tie_word_embeddings=True))
    c = m.config
    active = 0
    for name, p in m.named_parameters(remove_duplicate=False):
        if name == "model.embed_tokens.weight":
            continue  # embeddings are not matmuls; the (tied) LM head is counted below
        frac = c.num_experts_per_tok / c.num_experts if ".experts." in name else 1.0
        active += p.numel() * frac
    assert c.active_params() == active
    S = 128
    want = 6 * active + 6 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * S
    assert m.flops_per_token(S) == want


def test_greedy_generate_matches_transformers(tmp_path):
    hf, ours = hf_and_ours(tmp_path, moe=True, tied=True)
    prompt = torch.randint(0, VOCAB, (6,))
    got = generate(ours, prompt, max_new_tokens=8)
    ref = hf.generate(prompt[None], max_new_tokens=8, do_sample=False, min_new_tokens=8)[0]
    assert torch.equal(got, ref)
    eos = int(got[9])  # the 4th new token; generation stops at its first occurrence
    first = 6 + got[6:].tolist().index(eos)
    stopped = generate(ours, prompt, max_new_tokens=8, eos_token_id=eos)
    assert torch.equal(stopped, got[: first + 1])
