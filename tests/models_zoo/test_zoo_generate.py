"""KV-cache generation (xt.models.common.generate) for every zoo model and Qwen3 / Qwen3-MoE:
greedy output equals transformers' greedy ``generate``; sampling follows the nucleus distribution."""
from __future__ import annotations

import pytest
import torch

from xt.models.common.generate import generate, sample_next
from zoo_helpers import ARCHS, hf_and_ours, random_docs


def _hf_greedy(hf, prompt: torch.Tensor, n: int) -> list[int]:
    with torch.no_grad():
        out = hf.generate(prompt[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def _perturb(hf):
    # larger weights -> less uniform next-token distributions, so greedy ties are unlikely
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "embed" in name or "lm_head" in name:
                p.mul_(20)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generation_equals_hf(tmp_path, arch):
    from xt.models import from_pretrained

    hf, _ = hf_and_ours(tmp_path, arch)
    _perturb(hf)
    hf.save_pretrained(tmp_path / "big")
    ours = from_pretrained(tmp_path / "big", attn_backend="sdpa")
    prompts = random_docs([6, 11, 3], seed=11)  # different lengths in one batch, no padding
    got = generate(ours, [p.tolist() for p in prompts], 10)
    assert got == [_hf_greedy(hf, p, 10) for p in prompts]


@pytest.mark.parametrize("moe", [False, True])
def test_greedy_generation_qwen3_equals_hf(tmp_path, moe):
    import transformers as tf

    from xt.models import from_pretrained

    common = dict(vocab_size=97, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, initializer_range=0.5, eos_token_id=None)
    hc = (tf.Qwen3MoeConfig(**common, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=12)
          if moe else tf.Qwen3Config(**common))
    torch.manual_seed(0)
    hf = tf.AutoModelForCausalLM.from_config(hc, attn_implementation="eager").eval()
    hf.save_pretrained(tmp_path / "q")
    ours = from_pretrained(tmp_path / "q", attn_backend="sdpa")
    prompts = random_docs([5, 9], seed=12)
    assert generate(ours, [p.tolist() for p in prompts], 8) == [_hf_greedy(hf, p, 8) for p in prompts]


def test_eos_stops_a_sequence(tmp_path):
    hf, ours = hf_and_ours(tmp_path, "llama")
    prompt = random_docs([5], seed=13)[0].tolist()
    free = generate(ours, [prompt], 6)[0]
    stopped = generate(ours, [prompt, prompt], 6, eos_token_id=free[2])
    assert stopped == [free[: free.index(free[2]) + 1]] * 2


def test_top_p_sampling_follows_the_nucleus():
    logits = torch.tensor([[2.0, 1.5, 1.0, -1.0, -3.0]])
    temperature, top_p = 0.7, 0.8
    p = torch.softmax(logits[0] / temperature, -1)
    keep = (p.cumsum(0) - p) < top_p  # smallest prefix of the sorted probs reaching top_p
    ref = torch.where(keep, p, torch.zeros_like(p))
    ref = ref / ref.sum()
    g = torch.Generator().manual_seed(0)
    n = 20000
    draws = sample_next(logits.expand(n, -1), temperature, top_p, generator=g)
    freq = torch.bincount(draws, minlength=5).double() / n
    assert set(draws.unique().tolist()) == set(keep.nonzero().flatten().tolist())
    assert (freq - ref.double()).abs().max() < 0.015  # ~4 standard errors at n=20000
    assert torch.equal(sample_next(logits, 0.0), logits.argmax(-1))
    assert torch.equal(sample_next(logits.expand(50, -1), 1.0, top_p=1e-6, generator=g), torch.zeros(50, dtype=torch.long))


def test_sampled_generation_is_reproducible_and_can_differ_from_greedy(tmp_path):
    hf, ours = hf_and_ours(tmp_path, "gpt_oss")
    prompt = random_docs([4], seed=14)[0].tolist()
    a = generate(ours, [prompt], 12, temperature=1.5, top_p=0.95, generator=torch.Generator().manual_seed(3))
    b = generate(ours, [prompt], 12, temperature=1.5, top_p=0.95, generator=torch.Generator().manual_seed(3))
    greedy = generate(ours, [prompt], 12)
    assert a == b and a != greedy
    with pytest.raises(ValueError, match="top_p"):
        generate(ours, [prompt], 2, temperature=1.0, top_p=0.0)


def test_logprobs_of_sampled_tokens_equal_hf_forward(tmp_path):
    hf, ours = hf_and_ours(tmp_path, "deepseek_v3")
    prompts = [p.tolist() for p in random_docs([5, 8], seed=15)]
    toks, logps = generate(ours, prompts, 6, temperature=1.0, generator=torch.Generator().manual_seed(1),
                           return_logprobs=True)
    for p, t, lp in zip(prompts, toks, logps):
        seq = torch.tensor(p + t)
        with torch.no_grad():
            ref = torch.log_softmax(hf(seq[None]).logits[0].float(), -1)
        want = ref[len(p) - 1: len(seq) - 1].gather(1, torch.tensor(t)[:, None])[:, 0]
        assert len(lp) == len(t) == 6
        assert torch.allclose(torch.tensor(lp), want, atol=1e-5)
