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
