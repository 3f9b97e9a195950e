"""The training hot path never synchronises the host with the GPU: a micro-batch's forward and
backward (bf16 autocast, bf16 compute copies, fused loss, MoE kernels, compiled glue) run under
``torch.cuda.set_sync_debug_mode("error")``, which raises on any synchronising call (a ``.item()``,
``.tolist()``, a pageable host-to-device copy, a data-dependent shape)."""
from __future__ import annotations

import pytest
import torch

from xt.core.engine.compute_weights import ComputeWeights
from xt.models import build_model
from zoo_helpers import pack, random_docs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

QWEN3_MOE = dict(architectures=["Qwen3MoeForCausalLM"], vocab_size=512, hidden_size=64, intermediate_size=128,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8,
                 num_experts_per_tok=2, moe_intermediate_size=32, initializer_range=0.05)


def test_qwen3_moe_micro_batch_has_no_host_sync():
    torch.manual_seed(0)
    model = build_model(dict(QWEN3_MOE)).cuda()
    weights = ComputeWeights(model)
    batches = []
    for seed, lengths in enumerate(([40, 17, 70], [90, 33], [12, 100, 20])):
        b = pack(random_docs(lengths, seed=seed))
        b["max_seqlen"] = max(lengths)
        batches.append({k: (v.cuda() if torch.is_tensor(v) else v) for k, v in b.items()})

    def step(batch):
        with weights.swapped(), torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(**batch)
            (out.loss_sum + (out.aux_loss if out.aux_loss is not None else 0.0)).backward()

    for b in batches[:2]:  # compilation, autotuning and the first gradients (not the hot path)
        step(b)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(batches[2])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
