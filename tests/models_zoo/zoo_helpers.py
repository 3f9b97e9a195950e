"""Helpers for the model-zoo tests (Llama, GPT-OSS, DeepSeek-V3, Kimi K2); HF transformers is the reference.

A uniquely named module (not conftest) so other test folders' helpers never shadow it.
"""
from __future__ import annotations

import torch

import xt.models.deepseek_v3  # noqa: F401  (registers the zoo families)
import xt.models.gpt_oss  # noqa: F401
import xt.models.llama  # noqa: F401

torch.set_num_threads(1)

VOCAB = 97

YARN_DS = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0,
           "mscale": 1.0, "mscale_all_dim": 1.0, "original_max_position_embeddings": 16}
YARN_OSS = {"rope_type": "yarn", "rope_theta": 150000.0, "factor": 8.0, "beta_fast": 32.0, "beta_slow": 1.0,
            "truncate": False, "original_max_position_embeddings": 16}
LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}


def hf_config(arch: str):
    """A tiny transformers config for ``arch`` in ``ARCHS`` (a few layers, 8-16 experts)."""
    import transformers as tf

    if arch in ("llama", "llama_tied"):
        return tf.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=arch == "llama_tied",
                              rope_parameters=LLAMA3 if arch == "llama" else None, eos_token_id=None)
    if arch == "gpt_oss":
        return tf.GptOssConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=16, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=8,
                               num_experts_per_tok=2, sliding_window=4, rope_parameters=YARN_OSS,
                               swiglu_limit=1.5, max_position_embeddings=128)
    if arch == "deepseek_v3":
        return tf.DeepseekV3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                                   num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
                                   n_shared_experts=1, n_routed_experts=8, kv_lora_rank=16, q_lora_rank=24,
                                   qk_rope_head_dim=8, v_head_dim=12, qk_nope_head_dim=8, n_group=4, topk_group=2,
                                   num_experts_per_tok=3, first_k_dense_replace=1, rope_parameters=YARN_DS,
                                   max_position_embeddings=64, routed_scaling_factor=2.5)
    if arch == "kimi_k2":
        return kimi_k2_scaled_hf_config()
    raise KeyError(arch)


def kimi_k2_scaled_hf_config():
    """Kimi K2's structure (``examples/kimi_k2.toml``: 384 experts, 8 per token, 1 shared, 64 heads,
    first_k_dense_replace 1, n_group 1, YaRN x32, no q compression bypass) with every size divided
    down: 16 experts (8 per token), 8 heads, hidden 64."""
    import transformers as tf

    return tf.DeepseekV3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, moe_intermediate_size=16,
                               num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=8, n_shared_experts=1,
                               n_routed_experts=16, kv_lora_rank=32, q_lora_rank=48, qk_rope_head_dim=8,
                               v_head_dim=16, qk_nope_head_dim=16, n_group=1, topk_group=1, num_experts_per_tok=8,
                               first_k_dense_replace=1, routed_scaling_factor=2.827, norm_topk_prob=True,
                               rope_parameters={"rope_type": "yarn", "rope_theta": 50000.0, "factor": 32.0,
                                                "beta_fast": 1.0, "beta_slow": 1.0, "mscale": 1.0,
                                                "mscale_all_dim": 1.0, "original_max_position_embeddings": 4},
                               max_position_embeddings=128)


ARCHS = ("llama", "llama_tied", "gpt_oss", "deepseek_v3", "kimi_k2")


def hf_model(arch: str, seed: int = 0):
    """A randomly initialised transformers model in eval mode (float32, eager attention), with its
    zero/one-initialised tensors (norms, biases, sinks, router bias) randomised too."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(hf_config(arch), attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias") or name.endswith("sinks"):
                p.normal_(0, 0.5)
        for name, b in m.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.normal_(0, 0.05)
    return m


def hf_and_ours(tmp_path, arch: str, seed: int = 0):
    """Save a random HF model with ``save_pretrained`` (hub key layout) and load it with
    ``xt.models.from_pretrained`` (our registry + key mapping)."""
    from xt.models import from_pretrained

    hf = hf_model(arch, seed)
    hf.save_pretrained(tmp_path / "hf")
    return hf, from_pretrained(tmp_path / "hf", attn_backend="sdpa").eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64 (docs/architecture.md, Numerics)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def random_docs(lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    """Random token documents of the given lengths."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g) for n in lengths]


def pack(docs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Packed batch per docs/contracts.md: pre-shifted labels, -100 at each document's last token."""
    ids = torch.cat(docs)
    labels = torch.cat([torch.cat([d[1:], torch.tensor([-100])]) for d in docs])
    pos = torch.cat([torch.arange(len(d)) for d in docs])
    cu = torch.zeros(len(docs) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor([len(d) for d in docs]).cumsum(0)
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "cu_seqlens": cu}


def converter(arch: str):
    """The ``(hf_to_xt, xt_to_hf)`` pair of ``arch``."""
    import importlib

    pkg = {"llama": "llama", "llama_tied": "llama", "gpt_oss": "gpt_oss"}.get(arch, "deepseek_v3")
    mod = importlib.import_module(f"xt.models.{pkg}.state_dict")
    return mod.hf_to_xt, mod.xt_to_hf
