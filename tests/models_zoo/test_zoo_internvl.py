"""InternVL (InternViT + pixel shuffle + projector + Qwen3 / Qwen3-MoE) against transformers'
``InternVLForConditionalGeneration`` (fp32, CPU), on tiny random configs built in transformers.

For a dense and an MoE (Intern-S1-shaped) language model: logits equal for the same weights and
tiles (packed, two samples with their images); one step's gradients equal; the HF checkpoint
round trip is bit-exact and transformers reads our folder back; the model builds on meta.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from xt.models import from_pretrained, save_pretrained
from xt.models.internvl.state_dict import from_hf

TOL = 1e-5
IMG = 299  # image_token_id


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |b|`` in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def hf_config(lm: str, tied: bool = False):
    """A tiny transformers InternVL config: 56-px tiles of 14-px patches (4x4 grid -> 4 tokens per tile)."""
    from transformers import InternVLConfig

    text = dict(model_type=lm, vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=12)
    if lm == "qwen3_moe":
        text.update(moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True)
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  image_size=56, patch_size=14, use_qk_norm=lm == "qwen3_moe",
                  norm_type="rms_norm" if lm == "qwen3_moe" else "layer_norm")
    return InternVLConfig(vision_config=vision, text_config=text, image_token_id=IMG, image_seq_length=4,
                          tie_word_embeddings=tied)


def hf_and_ours(tmp_path, lm: str, tied: bool = False):
    """A random transformers model (norms, biases and layer scales randomised too), saved, and ours
    loaded from that folder."""
    from transformers import InternVLForConditionalGeneration

    torch.manual_seed(0)
    hf = InternVLForConditionalGeneration(hf_config(lm, tied)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() == 1 or "cls_token" in name or "position_embeddings" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    hf.save_pretrained(tmp_path / "hf")
    return hf, from_pretrained(tmp_path / "hf").eval()


def sample(n_tiles: int, text: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids [text + 4 n_tiles + text], pixel_values [n_tiles, 3, 56, 56])``: image tokens between text."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randint(0, IMG, (text,), generator=g), torch.randint(0, IMG, (text,), generator=g)
    ids = torch.cat([a, torch.full((4 * n_tiles,), IMG), b])
    return ids, torch.randn(n_tiles, 3, 56, 56, generator=g)


def packed(samples):
    ids = torch.cat([s[0] for s in samples])
    lens = [len(s[0]) for s in samples]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    labels = torch.cat([torch.cat([s[0][1:], torch.tensor([-100])]) for s in samples])
    labels[torch.cat([s[0] for s in samples]) == IMG] = -100
    return dict(input_ids=ids, labels=labels, cu_seqlens=cu, pixel_values=torch.cat([s[1] for s in samples]))


LMS = ("qwen3", "qwen3_moe")


@pytest.mark.parametrize("lm", LMS)
def test_packed_logits_equal_hf(tmp_path, lm):
    hf, ours = hf_and_ours(tmp_path, lm)
    samples = [sample(2, 5, 1), sample(1, 3, 2)]
    out = ours(**{k: v for k, v in packed(samples).items() if k != "labels"})
    with torch.no_grad():
        ref = torch.cat([hf(input_ids=i[None], pixel_values=p).logits[0] for i, p in samples])
    assert out.logits.shape == ref.shape
    assert rel_err(out.logits, ref) <= TOL
    # the image features matter: other pixels change the logits
    samples[0] = (samples[0][0], samples[0][1] + 1.0)
    moved = ours(**{k: v for k, v in packed(samples).items() if k != "labels"})
    assert rel_err(moved.logits, out.logits) > 1e-3


@pytest.mark.parametrize("lm", LMS)
def test_training_step_gradients_equal_hf(tmp_path, lm):
    hf, ours = hf_and_ours(tmp_path, lm)
    hf.config.text_config.router_aux_loss_coef = 0.0
    hf.train()
    ours.train()
    samples = [sample(1, 6, 3), sample(2, 4, 4)]
    batch = packed(samples)
    out = ours(**batch)
    out.loss_sum.backward()
    ref = 0
    for i, p in samples:
        lab = torch.cat([i[1:], torch.tensor([-100])])
        lab[i == IMG] = -100
        ref = ref + F.cross_entropy(hf(input_ids=i[None], pixel_values=p).logits[0], lab, reduction="sum",
                                    ignore_index=-100)
    ref.backward()
    assert rel_err(out.loss_sum, ref) <= TOL
    hf_grads = {k: p.grad for k, p in hf.named_parameters() if p.grad is not None}
    # HF in-memory keys (model.language_model.*) are the module-tree form from_hf accepts
    want = from_hf(list(hf_grads), hf_grads.__getitem__, ours.config)
    got = {k: p.grad for k, p in ours.named_parameters()}
    assert set(got) == set(want)
    norm = torch.sqrt(sum(g.double().pow(2).sum() for g in want.values()))
    for k, g in got.items():
        assert g is not None, k
        floor = max(float(want[k].double().norm()), 0.1 * float(norm))
        assert float((g.double() - want[k].double()).norm()) / floor <= TOL, k
    assert any(k.startswith("model.vision_tower") and float(g.abs().sum()) > 0 for k, g in got.items())


@pytest.mark.parametrize("lm,tied", [("qwen3", True), ("qwen3_moe", False)])
def test_hf_checkpoint_round_trip_bit_exact(tmp_path, lm, tied):
    from transformers import InternVLForConditionalGeneration

    hf, ours = hf_and_ours(tmp_path, lm, tied)
    save_pretrained(ours, tmp_path / "ours")
    a = load_file(str(tmp_path / "hf" / "model.safetensors"))
    b = load_file(str(tmp_path / "ours" / "model.safetensors"))
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    again = InternVLForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    ids, px = sample(1, 4, 7)
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids[None], pixel_values=px).logits,
                           hf(input_ids=ids[None], pixel_values=px).logits)


def test_meta_build_and_bad_inputs():
    from xt.models import build_model

    cfg = hf_config("qwen3_moe").to_dict()
    cfg["architectures"] = ["InternVLForConditionalGeneration"]
    torch.manual_seed(3)
    eager = build_model(cfg)
    torch.manual_seed(3)
    meta = build_model(cfg, device="meta")
    assert all(p.is_meta for p in meta.parameters())
    assert set(eager.init_rules()) == set(dict(eager.named_parameters()))
    lam = eager.model.vision_tower.encoder.layer[0].lambda_1
    assert torch.equal(lam, torch.full_like(lam, 0.1))
    ids, px = sample(2, 3, 0)
    with pytest.raises(ValueError, match="image tokens"):
        eager(input_ids=ids, pixel_values=px[:1])
    with pytest.raises(ValueError, match="tiles must be"):
        eager(input_ids=ids, pixel_values=torch.zeros(2, 3, 28, 28))


@pytest.mark.parametrize("lm", LMS)
def test_greedy_generation_with_images_equals_hf_generate(tmp_path, lm):
    """Two prompts with their tiles in one packed KV-cache generation (xt.models.generate with
    pixel_values) give transformers' greedy ``generate`` tokens for each prompt alone."""
    from xt.models import generate
    hf, ours = hf_and_ours(tmp_path, lm)
    prompts = [sample(2, 5, 7), sample(1, 3, 8)]
    got = generate(ours, [i.tolist() for i, _ in prompts], 12, pixel_values=torch.cat([p for _, p in prompts]))
    for (ids, px), tokens in zip(prompts, got):
        with torch.no_grad():
            ref = hf.generate(input_ids=ids[None], attention_mask=torch.ones_like(ids)[None], pixel_values=px,
                              max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert tokens == ref[0, len(ids):].tolist()
    # the tiles reach the prompt's forward: other pixels give other log-probabilities
    _, lp = generate(ours, [prompts[0][0].tolist()], 1, pixel_values=prompts[0][1], return_logprobs=True)
    _, other = generate(ours, [prompts[0][0].tolist()], 1, pixel_values=prompts[0][1] + 1.0, return_logprobs=True)
    assert abs(lp[0][0] - other[0][0]) > 1e-4
