"""Cross-package: a real packed batch from xt.data through an xt.models Qwen3-MoE.

The packed batch's summed loss equals the sum of its documents' losses run one by one (each
document alone, positions from 0), and its token-weighted mean equals the mean of the per-token
losses: packing changes nothing but speed.
"""
from __future__ import annotations

import pytest
import torch

from xt.data import DataConfig, build_loader
from xt.models import build_model

TINY = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 151936,
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 8, "intermediate_size": 64, "moe_intermediate_size": 16, "num_experts": 4,
        "num_experts_per_tok": 2, "norm_topk_prob": True, "tie_word_embeddings": False}


@pytest.mark.parametrize("max_seq_len", [24, 64])
def test_packed_real_batch_equals_documents_alone(max_seq_len):
    loader = iter(build_loader(DataConfig(source="shakespeare", tokens_per_micro_batch=128,
                                          max_seq_len=max_seq_len, seed=3)))
    batch = next(loader)
    cu = batch["cu_seqlens"].tolist()
    assert len(cu) > 2  # several documents (chunks) in one micro-batch
    torch.manual_seed(0)
    model = build_model(TINY).double()
    packed = model(**batch, return_logits=True)
    total, n_tok = 0.0, 0
    for s, e in zip(cu[:-1], cu[1:]):
        labels = batch["labels"][s:e]
        alone = model(input_ids=batch["input_ids"][s:e], labels=labels,
                      position_ids=torch.arange(e - s), return_logits=True)
        torch.testing.assert_close(packed.logits[s:e], alone.logits, rtol=1e-10, atol=1e-10)
        total += alone.loss_sum.item()
        n_tok += int((labels != -100).sum())
    assert packed.loss_sum.item() == pytest.approx(total, rel=1e-6)  # loss_sum is returned in fp32
    ref = torch.nn.functional.cross_entropy(packed.logits.double(), batch["labels"], ignore_index=-100,
                                            reduction="sum")
    assert packed.loss_sum.item() == pytest.approx(ref.item(), rel=1e-6)
    assert n_tok == int((batch["labels"] != -100).sum())
