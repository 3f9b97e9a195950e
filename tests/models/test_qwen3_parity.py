"""Our Qwen3 / Qwen3-MoE against HF transformers for the same weights (fp32, rel err <= 1e-5)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qwen3_helpers import VOCAB, hf_and_ours, pack, rel_err

VARIANTS = {
    "dense": dict(moe=False),
    "dense_tied_bias": dict(moe=False, tied=True, attention_bias=True),
    "moe": dict(moe=True),
    "moe_tied_sparse_step": dict(moe=True, tied=True, decoder_sparse_step=2, num_hidden_layers=3,
                                 norm_topk_prob=False),
    "moe_mlp_only": dict(moe=True, mlp_only_layers=[0], num_hidden_layers=3),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_batched_logits_match_hf(tmp_path, variant):
    hf, ours = hf_and_ours(tmp_path, **VARIANTS[variant])
    ids = torch.randint(0, VOCAB, (3, 17))
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids).logits
    assert got.shape == ref.shape
    assert rel_err(got, ref) <= 1e-5


@pytest.mark.parametrize("variant", ["dense", "moe"])
def test_packed_documents_match_hf_run_alone(tmp_path, variant):
    hf, ours = hf_and_ours(tmp_path, **VARIANTS[variant])
    docs = [torch.randint(0, VOCAB, (n,)) for n in (7, 1, 12, 4)]
    batch = pack(docs)
    with torch.no_grad():
        out = ours(**batch, return_logits=True)
        ref = torch.cat([hf(d[None]).logits[0] for d in docs])
    assert rel_err(out.logits, ref) <= 1e-5
    # loss_sum: float32 sum of CE over labels != -100, from HF's logits of each document
    want = F.cross_entropy(ref, batch["labels"], ignore_index=-100, reduction="sum")
    assert out.loss_sum.dtype == torch.float32
    assert rel_err(out.loss_sum, want) <= 1e-5


def test_loss_sum_matches_hf_mean_loss(tmp_path):
    hf, ours = hf_and_ours(tmp_path, moe=True)
    ids = torch.randint(0, VOCAB, (1, 20))
    labels = ids.clone()
    labels[0, 5:9] = -100
    with torch.no_grad():
        ref = hf(ids, labels=labels, output_router_logits=False).loss  # HF shifts internally
        shifted = torch.cat([labels[0, 1:], torch.tensor([-100])])
        got = ours(ids[0], labels=shifted).loss_sum
    n = int((shifted != -100).sum())
    assert rel_err(got / n, ref) <= 1e-5


@pytest.mark.parametrize("tied", [False, True])
def test_aux_loss_and_expert_load_match_hf(tmp_path, tied):
    hf, ours = hf_and_ours(tmp_path, moe=True, tied=tied, num_hidden_layers=3)
    ids = torch.randint(0, VOCAB, (2, 15))
    with torch.no_grad():
        ref = hf(ids, output_router_logits=True)
        out = ours(ids)
    coef = hf.config.router_aux_loss_coef
    assert rel_err(out.aux_loss, coef * ref.aux_loss) <= 1e-5
    E, K = hf.config.num_local_experts, hf.config.num_experts_per_tok
    want = torch.stack([torch.bincount(lg.topk(K, dim=-1).indices.reshape(-1), minlength=E).float() / lg.shape[0] / K
                        for lg in ref.router_logits])
    assert torch.allclose(out.metrics["expert_load"], want)


def test_router_z_loss_matches_definition(tmp_path):
    hf, ours = hf_and_ours(tmp_path, moe=True)
    ours.config.router_aux_loss_coef = 0.0
    ours.config.router_z_loss_coef = 0.5
    ids = torch.randint(0, VOCAB, (2, 11))
    with torch.no_grad():
        ref = hf(ids, output_router_logits=True).router_logits
        got = ours(ids).aux_loss
    want = 0.5 * torch.stack([torch.logsumexp(lg.double(), -1).pow(2).mean() for lg in ref]).mean()
    assert rel_err(got, want) <= 1e-6


def test_attention_mask_drops_padding(tmp_path):
    """Right-padded rows give the logits of the unpadded documents; padding is zero."""
    hf, ours = hf_and_ours(tmp_path, moe=True)
    ids = torch.randint(0, VOCAB, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        got = ours(ids, attention_mask=mask).logits
        ref0, ref1 = hf(ids[:1]).logits[0], hf(ids[1:, :6]).logits[0]
    assert rel_err(got[0], ref0) <= 1e-5 and rel_err(got[1, :6], ref1) <= 1e-5
    assert torch.all(got[1, 6:] == 0)


def test_fused_loss_path_equals_logits_path(tmp_path):
    """Default with labels: no logits, fused chunked CE; same loss and gradients as full logits."""
    _, ours = hf_and_ours(tmp_path, moe=True, tied=True)
    docs = [torch.randint(0, VOCAB, (n,)) for n in (9, 14)]
    batch = pack(docs)
    fused = ours(**batch)
    assert fused.logits is None
    (fused.loss_sum + fused.aux_loss).backward()
    g_fused = {n: p.grad.clone() for n, p in ours.named_parameters()}
    ours.zero_grad()
    full = ours(**batch, return_logits=True)
    (full.loss_sum + full.aux_loss).backward()
    assert rel_err(fused.loss_sum, full.loss_sum) <= 1e-6
    for n, p in ours.named_parameters():
        assert rel_err(g_fused[n], p.grad) <= 1e-5, n


@pytest.mark.parametrize("tied", [False, True])
def test_gradients_match_hf(tmp_path, tied):
    """d(mean CE + coef * aux)/d(params) equals HF's for every parameter (same in-memory names)."""
    hf, ours = hf_and_ours(tmp_path, moe=True, tied=tied)
    ids = torch.randint(0, VOCAB, (2, 12))
    hf.train()
    ref = hf(ids, labels=ids, output_router_logits=True).loss  # mean CE + coef * aux
    ref.backward()
    labels = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], dim=1)
    out = ours(ids, labels=labels)
    n = int((labels != -100).sum())
    (out.loss_sum / n + out.aux_loss).backward()
    hf_grads = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        assert rel_err(p.grad, hf_grads[name].grad) <= 1e-5, name


def test_bf16_error_no_worse_than_hf_bf16(tmp_path):
    """Against the fp32 reference, our bf16 logits are at least as accurate as HF's own bf16 run."""
    # F=16: torch._grouped_mm (the kernels' CPU choice) needs 16-byte aligned rows in bf16
    hf, ours = hf_and_ours(tmp_path, moe=True, moe_intermediate_size=16)
    ids = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        ref = hf(ids).logits
        hf_bf16 = hf.to(torch.bfloat16)(ids).logits
        got = ours.to(torch.bfloat16)(ids).logits
    assert got.dtype == torch.bfloat16
    assert rel_err(got, ref) <= 1.1 * rel_err(hf_bf16, ref)
    assert rel_err(got, hf_bf16) <= 2e-2
