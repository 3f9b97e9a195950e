"""Helpers for the Qwen3 / Qwen3-MoE tests (HF transformers is the reference).

A uniquely named module (not conftest) so that other test folders' helpers never shadow it."""
from __future__ import annotations

import torch

torch.set_num_threads(1)

VOCAB = 96


def tiny_hf_config(moe: bool, tied: bool = False, **overrides):
    """A tiny random transformers config (``Qwen3Config`` or ``Qwen3MoeConfig``)."""
    from transformers import Qwen3Config, Qwen3MoeConfig

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=tied,
                  initializer_range=0.2, rope_theta=1000.0, rms_norm_eps=1e-6)
    if moe:
        common.update(num_experts=6, num_experts_per_tok=2, moe_intermediate_size=12, norm_topk_prob=True,
                      router_aux_loss_coef=0.01)
        common.update(overrides)
        return Qwen3MoeConfig(**common)
    common.update(overrides)
    return Qwen3Config(**common)


def hf_model(config, seed: int = 0):
    """A randomly initialised transformers causal LM in eval mode (float32, eager attention)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    # HF initialises norms to one; randomise them so the norm weights are really tested.
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return m


def hf_and_ours(tmp_path, moe: bool, tied: bool = False, **overrides):
    """Save a random HF model with ``save_pretrained`` and load it with our loader."""
    from xt.models import from_pretrained

    hf = hf_model(tiny_hf_config(moe, tied, **overrides))
    hf.save_pretrained(tmp_path / "hf")
    return hf, from_pretrained(tmp_path / "hf").eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64 (docs/architecture.md, Numerics)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def pack(docs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Packed batch per docs/contracts.md: pre-shifted labels, -100 at each document's last token."""
    ids = torch.cat(docs)
    labels = torch.cat([torch.cat([d[1:], torch.tensor([-100])]) for d in docs])
    pos = torch.cat([torch.arange(len(d)) for d in docs])
    cu = torch.zeros(len(docs) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor([len(d) for d in docs]).cumsum(0)
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "cu_seqlens": cu}
