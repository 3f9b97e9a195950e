"""The Intern-S1-shaped vision-language model (InternViT + projector + Qwen3-MoE LM) under
parallelize equals its single-process run (fp32, gloo): EP x FSDP on the language model, activation
checkpointing, and a frozen vision tower. The vision tower and projector sit in the root FSDP unit;
every document of at least 6 tokens carries one image (4 placeholder tokens, one 56-px tile).

SGD with momentum and aux losses off, as for the other families (test_parallel_zoo.py). Ulysses SP:
every SP rank runs the vision tower on all the micro-batch's tiles and takes the features of its
slice's image tokens (numbered over the whole micro-batch), also when an image's tokens straddle
two slices."""
from __future__ import annotations

import pytest

from parallel_cases import reference_toy
from parallel_layouts import mismatches

pytest.importorskip("xt.models.internvl")
pytestmark = pytest.mark.dist

VL_MODEL = {"architectures": ["InternVLForConditionalGeneration"], "model_type": "internvl",
            "image_token_id": 63, "image_seq_length": 4, "tie_word_embeddings": False,
            "vision_config": {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                              "intermediate_size": 32, "image_size": 56, "patch_size": 14},
            "text_config": {"model_type": "qwen3_moe", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
                            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                            "head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
                            "norm_topk_prob": True, "router_aux_loss_coef": 0.0, "initializer_range": 0.2}}
VL = {"image_token_id": 63, "tokens": 4, "image_size": 56}


@pytest.mark.parametrize("world,layout,freeze", [
    (4, dict(ep_size=2, activation_checkpointing=0.5), ()),          # EP 2 inside FSDP 4, AC on one layer
    (4, dict(ep_size=4, activation_checkpointing=1.0), ("vision_tower",)),
    (2, dict(hsdp_replicate=2), ("projector",)),
])
def test_internvl_moe_matches_single_process(pools, world, layout, freeze):
    docs = [[[9, 14, 2], [13, 5], [7, 4, 3], [17]][:world], [[11, 3], [6, 8], [9], [2, 8]][:world]]
    spec = dict(fn="parallel_cases:run_toy", builder="xt_registry", model=VL_MODEL, vl=VL, freeze=freeze, seed=4,
                skew="none", docs=docs, lr=1e-2, max_norm=1.0, optim="sgd",
                layout=dict(layout, param_dtype=None, reduce_dtype=None))
    got, ref = pools(world).run(spec), reference_toy(spec)
    if freeze:
        frozen = [k for k in ref["grads"] if k.startswith({"vision_tower": "model.vision_tower.",
                                                            "projector": "model.multi_modal_projector."}[freeze[0]])]
        assert frozen and all(float(ref["grads"][k].abs().sum()) == 0 for k in frozen)
    if "vision_tower" not in freeze:  # the images reach the loss
        assert any(k.startswith("model.vision_tower.") and float(v.abs().sum()) > 0 for k, v in ref["grads"].items())
    bad = mismatches(got, ref)
    assert not bad, "\n".join(bad[:20])


def _matches_one_process(pools, world: int, layout: dict, docs: list, seed: int) -> None:
    """The toy run of `VL_MODEL` on `docs` under `layout` equals one process; the images reach the loss."""
    spec = dict(fn="parallel_cases:run_toy", builder="xt_registry", model=VL_MODEL, vl=VL, seed=seed,
                skew="none", docs=docs, lr=1e-2, max_norm=1.0, optim="sgd",
                layout=dict(layout, param_dtype=None, reduce_dtype=None))
    got, ref = pools(world).run(spec), reference_toy(spec)
    assert any(k.startswith("model.vision_tower.") and float(v.abs().sum()) > 0 for k, v in ref["grads"].items())
    bad = mismatches(got, ref)
    assert not bad, "\n".join(bad[:20])


@pytest.mark.parametrize("world,layout", [(2, dict(ep_size=2)), (2, dict())])
def test_a_text_only_micro_batch_beside_image_ones(pools, world, layout):
    """A data mix of text and image sources (or image data with text-only records) gives some ranks
    micro-batches without a tile: the vision tower then gets zero gradients there rather than none,
    so FSDP2's reduce-scatter of the root unit matches on every rank; equal to one process."""
    docs = [[[3, 2, 4], [9, 7]], [[12], [4, 5]], [[2], [3]]]  # step 0: rank 0 text only; step 2: no image at all
    _matches_one_process(pools, world, layout, docs, seed=5)


@pytest.mark.parametrize("world,layout", [(2, dict(sp_size=2)), (4, dict(sp_size=2, ep_size=2))])
def test_ulysses_sp_with_images_matches_single_process(pools, world, layout):
    # one micro-batch per data-parallel row; in step 0 the 12-token document's image (positions 6-9
    # of 17, padded to 18) straddles the two SP slices; step 1's first row has no image at all
    docs = [[[5, 12], [9, 7]], [[3, 2], [11, 6]]]
    _matches_one_process(pools, world, layout, [d[:world // 2] for d in docs], seed=6)
