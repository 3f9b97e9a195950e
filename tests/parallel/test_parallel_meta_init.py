"""Meta-device construction (docs/architecture.md, Meta-device construction).

* one process, every family: a meta build materialised by ``xt.parallel.materialize_`` equals the
  eager build of the same seed bit for bit (parameters, buffers, ties, and the global RNG after);
* gloo worlds 2 and 4: built on meta, laid out on meta (FSDP2, EP, HSDP) and materialised, every
  layout assembles exactly the single process's tensors, and one training step gives the single
  process's loss and gradients;
* the bytes a rank allocates while it builds and materialises (``MemTracker``, CPU) are its share
  of the model, ~1/world, plus at most a couple of initialisation chunks.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch

from meta_cases import reference_meta

ROOT = Path(__file__).resolve().parents[2]


def _config(name: str, **over) -> dict:
    cfg = tomllib.loads((ROOT / "examples" / name).read_text())["model"]["config"]
    return {**cfg, "vocab_size": 64, **over}


QWEN3_MOE = _config("qwen3_moe_shakespeare.toml", hidden_size=32, head_dim=8, moe_intermediate_size=16,
                    router_aux_loss_coef=0.0)
FAMILIES = {
    "qwen3_moe": QWEN3_MOE,
    "qwen3_dense": {**QWEN3_MOE, "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "num_experts": 0,
                    "intermediate_size": 48, "tie_word_embeddings": False},
    "llama_tied": _config("llama_tiny.toml"),
    "gpt_oss": _config("gpt_oss_tiny.toml", router_aux_loss_coef=0.0),
    "deepseek_v3": _config("deepseek_v3_tiny.toml", seq_aux_loss_coef=0.0),
    "kimi_k2": _config("kimi_k2_tiny.toml", seq_aux_loss_coef=0.0),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_meta_build_equals_eager_build(family):
    from xt.models import build_model
    from xt.parallel import is_meta_model, materialize_

    torch.manual_seed(7)
    eager = build_model(FAMILIES[family], attn_backend="sdpa")
    rng_eager = torch.random.get_rng_state()
    torch.manual_seed(7)
    meta = build_model(FAMILIES[family], device="meta", attn_backend="sdpa")
    assert is_meta_model(meta) and torch.equal(torch.random.get_rng_state(), rng_eager)
    materialize_(meta, "cpu")
    assert not is_meta_model(meta)
    want = dict(eager.named_parameters(remove_duplicate=False)) | dict(eager.named_buffers())
    got = dict(meta.named_parameters(remove_duplicate=False)) | dict(meta.named_buffers())
    assert sorted(got) == sorted(want)
    for name, t in want.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name
    if eager.config.tie_word_embeddings:
        assert meta.lm_head.weight is meta.model.embed_tokens.weight
    # not all zeros / ones: the normal draws have the configured std
    emb = got["model.embed_tokens.weight"].double()
    std = getattr(eager.config, "initializer_range", 0.02)
    assert abs(emb.std().item() / std - 1) < 0.1


def test_materialize_refuses_a_model_without_rules():
    from xt.parallel import materialize_
    with torch.device("meta"):
        m = torch.nn.Linear(3, 4)
    with pytest.raises(ValueError, match="Linear has no init_rules"):
        materialize_(m, "cpu")


DIST_CASES = [(4, "deepseek_v3", dict()), (4, "deepseek_v3", dict(ep_size=4)),
              (4, "deepseek_v3", dict(hsdp_replicate=2, ep_size=2)), (2, "gpt_oss", dict(ep_size=2)),
              (2, "qwen3_moe", dict(ep_size=2)), (2, "llama_tied", dict()), (4, "qwen3_dense", dict(hsdp_replicate=2))]


@pytest.mark.dist
@pytest.mark.parametrize("world,family,layout", DIST_CASES,
                         ids=[f"w{w}-{f}-" + ("_".join(f"{k}{v}" for k, v in lay.items()) or "fsdp") for w, f, lay in DIST_CASES])
def test_layout_on_meta_assembles_single_process_tensors(pools, world, family, layout):
    docs = [[5, 3], [4, 4], [7], [2, 6]][:world]
    spec = dict(fn="meta_cases:run_meta", model=FAMILIES[family], seed=3, docs=docs,
                layout=dict(layout, param_dtype=None, reduce_dtype=None))
    got, ref = pools(world).run(spec), reference_meta(spec)
    assert sorted(got["params"]) == sorted(ref["params"])
    bad = [n for n, t in ref["params"].items() if not torch.equal(got["params"][n], t)]
    bad += [n for n, t in ref["buffers"].items() if not torch.equal(got["buffers"][n], t)]
    assert not bad, bad[:10]
    assert abs(got["loss"] - ref["loss"]) <= 1e-5 * abs(ref["loss"])
    norm = torch.sqrt(sum(g.double().square().sum() for g in ref["grads"].values()))
    for n, g in ref["grads"].items():
        err = (got["grads"][n].double() - g.double()).norm()
        assert err <= 1e-5 * max(g.double().norm(), 0.1 * norm), (n, float(err))


@pytest.mark.dist
@pytest.mark.parametrize("world", [2, 4])
def test_construction_memory_is_one_over_world(pools, world):
    """DeepSeek-V3 tiny with the real 151,936-token vocabulary (~170 MB in fp32, embeddings and head
    dominate). Peak bytes allocated on each rank from the meta build to the end of materialisation:
    at least its shard and at most its shard of the full model plus two init chunks (32 MB); the
    single-process eager build allocates all of it."""
    from xt.core.seeded_init import CHUNK_ELEMENTS
    model = _config("deepseek_v3_tiny.toml", vocab_size=151936, mtp_layers=0)
    spec = dict(fn="meta_cases:run_meta_memory", model=model, seed=1,
                layout=dict(ep_size=2, param_dtype=None, reduce_dtype=None))
    got = pools(world).run(spec)
    full = got["full_bytes"]
    assert full > 150e6
    slack = 2 * CHUNK_ELEMENTS * 4
    for peak, local in zip(got["peaks"], got["locals"]):
        assert local <= full / world * 1.01 + 1e6
        assert local <= peak <= full / world + slack, (peak, full / world)
