"""Packed image-text micro-batches (real digits, `xt.data` preprocessing) give every sample the
same loss as that sample run alone through the same InternVL model, for a dense and an MoE LM."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xt.data.config import data_config_from_dict
from xt.data.loader import build_loader
from xt.data.vl_loader import document_pixels
from xt.models import build_model

IMAGE_PAD = 151655  # Qwen3's <|image_pad|>
VISION = {"image_size": 56, "max_tiles": 1, "image_seq_length": 4, "image_token": "<|image_pad|>",
          "start_token": "<|vision_start|>", "end_token": "<|vision_end|>"}


def tiny_vl_config(moe: bool) -> dict:
    """An HF InternVL ``config.json`` dict: 56-px tiles (4 tokens each), a 2-layer Qwen3 / Qwen3-MoE LM
    with the Qwen3 tokenizer's vocabulary."""
    text = {"model_type": "qwen3_moe" if moe else "qwen3", "vocab_size": 151680, "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 8}
    if moe:
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)
    return {"architectures": ["InternVLForConditionalGeneration"], "model_type": "internvl",
            "image_token_id": IMAGE_PAD, "image_seq_length": 4, "downsample_ratio": 0.5, "tie_word_embeddings": True,
            "vision_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                              "intermediate_size": 64, "image_size": 56, "patch_size": 14},
            "text_config": text}


@pytest.mark.parametrize("moe", [False, True])
def test_packed_samples_equal_each_alone(moe):
    cfg = data_config_from_dict({"source": "digits_vqa", "tokens_per_micro_batch": 200, "vision": VISION})
    loader = build_loader(cfg)
    torch.manual_seed(0)
    model = build_model(tiny_vl_config(moe)).eval()
    batch = next(loader)
    cu = batch["cu_seqlens"].tolist()
    assert len(cu) >= 4  # several samples, each with its image
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, return_logits=True).logits
        out = model(**batch)
        per_token = F.cross_entropy(logits, batch["labels"], ignore_index=-100, reduction="none")
        packed = [per_token[a:b].sum() for a, b in zip(cu, cu[1:])]
        docs = loader.chunk_ids((0, 0)).tolist()
        for d, a, b, got in zip(docs, cu, cu[1:], packed):
            alone = model(input_ids=batch["input_ids"][a:b], labels=batch["labels"][a:b],
                          pixel_values=document_pixels(loader.dataset, d, cfg.vision))
            assert abs(float(alone.loss_sum) - float(got)) <= 1e-5 * float(got)
    assert abs(float(out.loss_sum) - float(sum(packed))) <= 1e-5 * float(out.loss_sum)
    # the tiles really steer the loss: the same text with other digits' pixels scores differently
    with torch.no_grad():
        swapped = model(**{**batch, "pixel_values": batch["pixel_values"].roll(1, 0)})
    assert abs(float(swapped.loss_sum) - float(out.loss_sum)) > 1e-4


def _each_alone(model, batch: dict, tokens_per_tile: int) -> list[tuple[float, float, int]]:
    """``[(packed loss of sample i, its loss run alone with its own tiles, its tiles)]``: the
    micro-batch's tiles go to its samples in order, as many as each has image tokens / tile."""
    cu, tile, out = batch["cu_seqlens"].tolist(), 0, []
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, return_logits=True).logits
        per_token = F.cross_entropy(logits, batch["labels"], ignore_index=-100, reduction="none")
        for a, b in zip(cu, cu[1:]):
            n = int((batch["input_ids"][a:b] == IMAGE_PAD).sum()) // tokens_per_tile
            alone = model(input_ids=batch["input_ids"][a:b], labels=batch["labels"][a:b],
                          pixel_values=batch["pixel_values"][tile:tile + n] if n else None)
            out.append((float(per_token[a:b].sum()), float(alone.loss_sum), n))
            tile += n
    assert tile == batch["pixel_values"].shape[0]
    return out


def test_a_mix_of_text_and_image_sources(tmp_path):
    """``[[data.mix]]`` of a text source and an image-text one (JSONL whose records have a digit or
    none): the stream alternates by weight; text micro-batches carry no tiles, image ones hold
    text-only and image samples side by side; every sample's packed loss equals it run alone."""
    import json

    from xt.data.image_corpora import corpus_jsonl
    digits = corpus_jsonl("digits_vqa")
    vl = tmp_path / "vl.jsonl"
    with open(vl, "w") as f:
        for i, line in enumerate(digits.read_text().splitlines()[:12]):
            rec = json.loads(line)
            if i % 3 == 1:  # a text-only conversation among the image ones
                rec = {"messages": [{"role": "user", "content": f"Say the number {i}."},
                                    {"role": "assistant", "content": f"{i}"}]}
            else:
                rec["images"] = [str(digits.parent / p) for p in rec["images"]]
            f.write(json.dumps(rec) + "\n")
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"text": f"Plain text record {i}, no image here at all."}) + "\n"
                            for i in range(10)))
    cfg = data_config_from_dict({"source": "mix", "tokens_per_micro_batch": 120, "vision": VISION, "mix": [
        {"source": "files", "paths": [str(text)], "weight": 1},
        {"source": "files", "paths": [str(vl)], "weight": 2, "images": True}]})
    loader = build_loader(cfg)
    torch.manual_seed(0)
    model = build_model(tiny_vl_config(moe=True)).eval()
    kinds = []
    for _ in range(3):
        batch = next(loader)
        got = _each_alone(model, batch, VISION["image_seq_length"])
        kinds.append(sorted({n for _, _, n in got}))
        assert batch["pixel_values"].shape[1:] == (3, 56, 56)
        for packed, alone, _ in got:
            assert abs(packed - alone) <= 1e-5 * abs(alone), (packed, alone)
    assert kinds == [[0, 1], [0], [0, 1]]  # weights 2 : 1 (smooth round-robin): image, text, image
    assert loader.realised_mix() == {str(text): 1 / 3, str(vl): 2 / 3}


def test_a_micro_batch_without_tiles_gives_the_vision_tower_zero_gradients():
    """Not None: FSDP2 reduce-scatters only existing gradients, so a rank without tiles must still
    have them (tests/parallel/test_parallel_internvl.py runs it under gloo); the loss is unchanged."""
    torch.manual_seed(0)
    model = build_model(tiny_vl_config(moe=False))
    ids = torch.randint(0, 1000, (12,))
    out = model(input_ids=ids, labels=ids.roll(-1), pixel_values=torch.zeros(0, 3, 56, 56))
    out.loss_sum.backward()
    vision = [p for n, p in model.named_parameters() if n.startswith(("model.vision_tower.", "model.multi_modal"))]
    assert vision and all(p.grad is not None and not p.grad.any() for p in vision)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, labels=ids.roll(-1)).loss_sum, out.loss_sum.detach())
