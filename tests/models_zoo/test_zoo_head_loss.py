"""The loss seam (`xt.models.common.head_loss`): every family returns its final hidden states and
head weight, and a loss object applies the head through the fused kernels.

- per-token log-probs (temperature 0.7) and entropies equal ``log_softmax`` of HF transformers'
  logits on the same weights, every family (fp32, documents run alone through HF);
- `HeadCrossEntropy` through the engine gives the loss and gradients of the model's own loss.
"""
from __future__ import annotations

import pytest
import torch

from xt.core.distributed import LocalDistContext
from xt.core.engine.step import forward_backward
from xt.models.common.head_loss import HeadCrossEntropy, token_log_probs
from zoo_helpers import ARCHS, VOCAB, hf_and_ours, pack, random_docs, rel_err

FAMILIES = ("qwen3_moe",) + ARCHS
TOL = 1e-5
TEMPERATURE = 0.7


def _pair(tmp_path, arch: str):
    if arch != "qwen3_moe":
        return hf_and_ours(tmp_path, arch)
    import transformers as tf
    from xt.models import from_pretrained

    cfg = tf.Qwen3MoeConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=8,
                            num_experts_per_tok=2, moe_intermediate_size=16, norm_topk_prob=True,
                            tie_word_embeddings=False)
    torch.manual_seed(0)
    hf = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    hf.save_pretrained(tmp_path / "hf")
    return hf, from_pretrained(tmp_path / "hf", attn_backend="sdpa").eval()


@pytest.mark.parametrize("arch", FAMILIES)
def test_token_log_probs_equal_log_softmax_of_hf_logits(tmp_path, arch):
    hf, ours = _pair(tmp_path, arch)
    docs = random_docs([9, 4, 13], seed=3)
    batch = pack(docs)
    out = ours(**batch, return_hidden=True)
    assert out.loss_sum is None and out.logits is None
    got = token_log_probs(out, batch["labels"], temperature=TEMPERATURE, return_entropy=True)
    with torch.no_grad():
        logits = torch.cat([hf(d[None]).logits[0] for d in docs]).double() / TEMPERATURE
    logp = torch.log_softmax(logits, -1)
    valid = batch["labels"] != -100
    ref_lp = torch.where(valid, logp.gather(-1, batch["labels"].clamp(min=0)[:, None])[:, 0], 0.0)
    ref_ent = torch.where(valid, -(logp.exp() * logp).sum(-1), 0.0)
    assert rel_err(got.log_probs, ref_lp) <= TOL
    assert rel_err(got.entropy, ref_ent) <= TOL


@pytest.mark.parametrize("arch", FAMILIES)
def test_head_cross_entropy_gives_the_models_own_loss_and_gradients(tmp_path, arch):
    _, ours = _pair(tmp_path, arch)
    ours.train()
    mbs = [pack(random_docs([6, 10], seed=5)), pack(random_docs([3, 12, 2], seed=6))]
    ref = forward_backward(ours, mbs, LocalDistContext(), torch.device("cpu"))
    ref_g = {n: p.grad.clone() for n, p in ours.named_parameters() if p.grad is not None}
    ours.zero_grad(set_to_none=True)
    new = forward_backward(ours, mbs, LocalDistContext(), torch.device("cpu"), loss=HeadCrossEntropy())
    assert float(new.loss) == pytest.approx(float(ref.loss), rel=1e-6)
    if ref.aux_loss is not None:
        assert float(new.aux_loss) == pytest.approx(float(ref.aux_loss), rel=1e-6)
    head = [n for n in ref_g if n.endswith("lm_head.weight") or n.endswith("embed_tokens.weight")]
    assert head, "the head got no gradient"
    for n, g in ref_g.items():
        assert rel_err(dict(ours.named_parameters())[n].grad, g) <= 1e-6, n


def test_head_cross_entropy_says_what_is_missing(tmp_path):
    _, ours = _pair(tmp_path, "llama")
    batch = pack(random_docs([5], seed=1))
    with pytest.raises(TypeError, match="return_hidden=True"):
        token_log_probs(ours(**batch), batch["labels"])
    out = ours(**batch, return_hidden=True)
    with pytest.raises(ValueError, match="4 tokens but the model returned 5"):
        token_log_probs(out, batch["labels"][:4])
