"""Distributed checkpoints of EP-sharded models: experts are DTensors with their global shape [E, ...],
so DCP saves every expert once and can load into another layout (different EP / SP / HSDP sizes).
Params after loading, and after one more step (optimizer state restored), equal the saving run."""
from __future__ import annotations

import pytest
import torch

from parallel_cases import reference_toy
from parallel_layouts import TOL, rel_err

pytestmark = pytest.mark.dist

MODEL = dict(vocab_size=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8)
FP32 = dict(param_dtype=None, reduce_dtype=None)


@pytest.mark.parametrize("layout_a,layout_b", [
    (dict(ep_size=2, sp_size=2), dict(ep_size=4, sp_size=2, activation_checkpointing=1.0)),
    (dict(ep_size=4), dict(hsdp_replicate=2, ep_size=2)),
])
def test_dcp_round_trip_across_layouts(pools, tmp_path, layout_a, layout_b):
    """Same sp_size on both sides, so both runs see the same per-rank batches."""
    dp = 4 // layout_a.get("sp_size", 1)
    docs = [[9, 7], [12, 4], [5, 5], [6]][:dp]
    spec = dict(fn="parallel_cases:run_dcp", model=MODEL, seed=2, skew="none", lr=1e-2, max_norm=1.0, docs=[docs, docs],
                layout_a=dict(layout_a, **FP32), layout_b=dict(layout_b, **FP32), dir=str(tmp_path / "ckpt"))
    got = pools(4).run(spec)
    ref_one = reference_toy(dict(spec, docs=[docs], layout=spec["layout_a"]))["params"]
    assert got["saved"]["model.layers.0.mlp.experts.w_gate_up"].shape[0] == MODEL["num_experts"]
    for name, ref in ref_one.items():
        assert rel_err(got["saved"][name], ref) <= TOL, name
        assert torch.equal(got["loaded"][name], got["saved"][name]), name
        assert rel_err(got["next_b"][name], got["next_a"][name]) <= TOL, name
