"""Single-process checks: layout validation, config errors, SP batch sharding, AC layer choice,
KV-head replication rule, block index helper, reference varlen attention, capacity dropping."""
from __future__ import annotations

import logging

import pytest
import torch

from xt.core.config.base import ConfigFieldError
from xt.parallel import LayoutError, ParallelConfig, shard_batch_for_sp, validate_layout
from xt.parallel.checkpointing import checkpointed_layer_ids
from xt.parallel.expert_parallel import AllToAllDispatcher, block_gather_index, capacity_metrics
from xt.parallel.ulysses import kv_repeat_for_sp
from xt.parallel.varlen_attention import varlen_attention

from parallel_cases import make_batch


@pytest.mark.parametrize("kwargs,world,sizes,needle", [
    (dict(hsdp_replicate=2, fsdp_size=3), 4, {}, "valid (hsdp_replicate, fsdp_size): [(1, 4), (2, 2), (4, 1)]"),
    (dict(ep_size=3), 4, dict(num_experts=6), "ep_size (3) must divide parallel.fsdp_size (4)"),
    (dict(ep_size=4), 4, dict(num_experts=6), "num_experts (6) is not divisible by parallel.ep_size (4); valid ep_size for fsdp_size 4: [1, 2]"),
    (dict(sp_size=3), 6, dict(num_attention_heads=4), "num_attention_heads (4) is not divisible by parallel.sp_size (3)"),
    (dict(sp_size=4), 6, dict(num_attention_heads=8), "sp_size (4) must divide the world size (6)"),
    (dict(sp_size=4), 4, dict(num_attention_heads=12, num_key_value_heads=6), "num_key_value_heads (6) must be a multiple"),
    (dict(ep_size=2), 2, {}, "has no MoE layers"),
    (dict(ep_size=2), 2, dict(num_experts=0), "has no MoE layers"),
    (dict(sp_size=2), 2, dict(num_attention_heads=4, mtp_layers=1), "not supported with multi-token prediction"),
])
def test_invalid_layouts_say_why(kwargs, world, sizes, needle):
    with pytest.raises(LayoutError) as err:
        validate_layout(ParallelConfig(**kwargs), world, **sizes)
    assert needle in str(err.value)


def test_valid_layout_resolves_fsdp_size():
    assert validate_layout(ParallelConfig(hsdp_replicate=2, ep_size=2, sp_size=4), 8, num_experts=8,
                           num_attention_heads=8, num_key_value_heads=2) == 4


@pytest.mark.parametrize("kwargs,field", [
    (dict(ep_size=0), "ep_size"), (dict(activation_checkpointing=1.5), "activation_checkpointing"),
    (dict(activation_checkpointing=0.5, activation_checkpointing_every_n=2), "activation_checkpointing_every_n"),
    (dict(param_dtype="fp8"), "param_dtype"), (dict(capacity_factor=0.0), "capacity_factor"),
])
def test_config_field_errors(kwargs, field):
    with pytest.raises(ConfigFieldError) as err:
        ParallelConfig(**kwargs)
    assert err.value.field == field


def test_checkpointed_layers():
    assert checkpointed_layer_ids(4, 0.5) == [1, 3]
    assert checkpointed_layer_ids(4, 1.0) == [0, 1, 2, 3]
    assert checkpointed_layer_ids(4, 0.0) == []
    assert checkpointed_layer_ids(10, 0.3) == [3, 6, 9]
    assert checkpointed_layer_ids(6, every_n=2) == [1, 3, 5]


def test_kv_repeat_rule():
    assert kv_repeat_for_sp(8, 4, 2) == 1
    assert kv_repeat_for_sp(8, 2, 8) == 4
    with pytest.raises(ValueError, match="num_key_value_heads \\(3\\)"):
        kv_repeat_for_sp(12, 3, 4)


def test_shard_batch_for_sp_pads_and_reassembles():
    batch = make_batch(0, [5, 3, 3], vocab=50)  # T = 11, sp 4 -> pad 1
    parts = [shard_batch_for_sp(batch, r, 4, pad_token_id=7) for r in range(4)]
    assert all(p["input_ids"].numel() == 3 for p in parts)
    assert parts[0]["cu_seqlens"].tolist() == [0, 5, 8, 11, 12] and parts[0]["max_seqlen"] == 5
    for key in ("input_ids", "labels", "position_ids"):
        joined = torch.cat([p[key] for p in parts])
        assert torch.equal(joined[:11], batch[key])
    assert torch.cat([p["labels"] for p in parts])[11] == -100
    assert torch.cat([p["input_ids"] for p in parts])[11] == 7
    with pytest.raises(ValueError, match="packed 1-D"):
        shard_batch_for_sp({"input_ids": torch.zeros(2, 3, dtype=torch.long)}, 0, 2)


def test_shard_batch_for_sp_keeps_tiles_whole_and_numbers_image_tokens():
    """A vision-language batch: every rank gets all tiles (even when N happens to equal T) and, per
    image token of its slice, the row of the batch's image features it takes (its global rank)."""
    batch = make_batch(0, [6, 5], vocab=50)  # T = 11, sp 2 -> pad 1, slices of 6
    batch["input_ids"][batch["input_ids"] == 49] = 0
    batch["input_ids"][[1, 2, 3, 4, 7]] = 49
    batch["pixel_values"] = torch.randn(11, 3, 2, 2)
    parts = [shard_batch_for_sp(batch, r, 2, image_token_id=49) for r in range(2)]
    assert all(p["pixel_values"] is batch["pixel_values"] for p in parts)
    assert [p["image_feature_index"].tolist() for p in parts] == [[-1, 0, 1, 2, 3, -1], [-1, 4, -1, -1, -1, -1]]
    assert "image_feature_index" not in shard_batch_for_sp(batch, 0, 2)  # a text model's batch: unchanged keys


def test_block_gather_index():
    idx = block_gather_index(torch.tensor([10, 0, 5]), torch.tensor([2, 0, 3]), 5)
    assert idx.tolist() == [10, 11, 5, 6, 7]


def test_varlen_attention_matches_masked_dense():
    g = torch.Generator().manual_seed(0)
    T, H, Hkv, d = 9, 4, 2, 8
    q, k, v = (torch.randn(T, h, d, generator=g, dtype=torch.float64) for h in (H, Hkv, Hkv))
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    doc = torch.repeat_interleave(torch.arange(2), torch.tensor([4, 5]))
    allowed = (doc[:, None] == doc[None]) & torch.ones(T, T, dtype=torch.bool).tril()
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    scores = torch.einsum("thd,shd->hts", q, kk) * d ** -0.5
    ref = torch.einsum("hts,shd->thd", scores.masked_fill(~allowed, float("-inf")).softmax(-1), vv)
    assert torch.allclose(varlen_attention(q, k, v, cu), ref, rtol=1e-12, atol=1e-12)


def test_capacity_factor_drops_counts_and_warns(caplog):
    g = torch.Generator().manual_seed(1)
    T, K, E, D = 10, 2, 4, 3
    x = torch.randn(T, D, generator=g, dtype=torch.float64, requires_grad=True)
    ids = torch.stack([torch.tensor([0, 1 + t % 3]) for t in range(T)])  # expert 0 gets every token
    w = torch.rand(T, K, generator=g, dtype=torch.float64)
    W = torch.randn(E, D, D, generator=g, dtype=torch.float64)
    disp = AllToAllDispatcher(E, None, capacity_factor=1.0)  # cap = ceil(20 / 4) = 5 rows per expert
    with caplog.at_level(logging.WARNING, logger="xt.parallel.expert_parallel"):
        xs, counts, ctx = disp.dispatch(x, ids, w)
    assert counts.tolist() == [5, 4, 3, 3] and disp.last_dropped_rows == 5 and disp.dropped_rows == 5
    assert "dropped 5 of 20" in caplog.text
    assert capacity_metrics(torch.nn.ModuleList([disp])) == {"moe_dropped_rows": 5, "moe_dropped_rows_last": 5}
    ys = torch.cat([xs[s:s + c] @ W[e] for e, (s, c) in enumerate(zip([0, 5, 9, 12], counts.tolist()))])
    y = disp.combine(ys, ctx)
    x_ref = x.detach().clone().requires_grad_(True)
    seen = [0] * E
    ref = torch.zeros(T, D, dtype=torch.float64)
    for t in range(T):  # expert 0 keeps its first 5 tokens (stable token order), drops the rest
        for k in range(K):
            e = int(ids[t, k])
            if seen[e] < 5:
                ref[t] += w[t, k] * (x_ref[t] @ W[e])
            seen[e] += 1
    assert torch.allclose(y, ref, atol=1e-6)  # combine weights in fp32
    y.sum().backward()
    ref.sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-6)


def test_clip_without_process_group_matches_torch():
    """One process: the global norm and the clipping equal torch.nn.utils.clip_grad_norm_ (float64)."""
    from xt.parallel.clip import clip_grad_norm_
    g = torch.Generator().manual_seed(4)
    ps = [torch.nn.Parameter(torch.randn(5, 3, generator=g, dtype=torch.float64)) for _ in range(3)]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    for p, q in zip(ps, qs):
        p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
        q.grad = p.grad.clone()
    norm = clip_grad_norm_(ps, 0.5)
    ref = torch.nn.utils.clip_grad_norm_(qs, 0.5)
    assert abs(norm.item() - ref.item()) <= 1e-6 * ref.item()
    for p, q in zip(ps, qs):
        assert torch.allclose(p.grad, q.grad, rtol=1e-6)
