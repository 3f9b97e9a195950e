"""Image-text data: InternVL preprocessing against transformers' processor on real images, the
record forms, placeholder expansion, assistant-only labels, and bad-image errors.

Real images: scikit-image's sample photos (asset ``skimage-data``) and scikit-learn's digits
(``sklearn-digits``, the ``digits_vqa`` corpus).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xt.data.assets import asset_path
from xt.data.config import data_config_from_dict
from xt.data.errors import DataError
from xt.data.images import image_tiles, load_image, num_tiles
from xt.data.vision_config import IMAGENET_MEAN, IMAGENET_STD, VisionDataConfig
from xt.data.loader import build_loader
from xt.data.vl_dataset import build_vl_dataset
from xt.data.vl_loader import document_pixels

PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "logo.png", "page.png",
          "text.png", "horse.png", "hubble_deep_field.jpg"]
QWEN_VISION = {"image_token": "<|image_pad|>", "start_token": "<|vision_start|>", "end_token": "<|vision_end|>"}


@pytest.fixture(scope="module")
def photos():
    return asset_path("skimage-data")


@pytest.fixture(scope="module")
def hf_image_processor():
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    return GotOcr2ImageProcessorPil(size={"height": 448, "width": 448}, crop_to_patches=True, max_patches=12,
                                    image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))


def test_tiles_equal_transformers_on_real_photos(photos, hf_image_processor):
    from PIL import Image

    spec, counts = VisionDataConfig(), []
    for name in PHOTOS:  # square, wide, tall, grey, RGBA: 1 to 13 tiles
        ref = hf_image_processor(images=[Image.open(photos / name)], return_tensors="pt")
        ours = image_tiles(load_image(photos / name, name), spec)
        assert ours.shape == ref["pixel_values"].shape, name
        assert torch.equal(ours, ref["pixel_values"]), name
        im = Image.open(photos / name)
        assert num_tiles(im.height, im.width, spec) == int(ref["num_patches"][0]) == ours.shape[0]
        counts.append(ours.shape[0])
    assert len(set(counts)) >= 4 and max(counts) > 10


@pytest.fixture()
def internvl_processor(hf_image_processor, monkeypatch):
    """transformers' ``InternVLProcessor`` over the Qwen3 tokenizer with InternVL's image tokens."""
    from transformers import AutoTokenizer, InternVLProcessor

    tok = AutoTokenizer.from_pretrained(str(asset_path("qwen3-tokenizer")), extra_special_tokens={
        "start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>"})
    # InternVLProcessor type-checks its video processor, which needs torchvision (not installed)
    monkeypatch.setattr(InternVLProcessor, "check_argument_for_proper_class", lambda self, name, arg: None)
    return InternVLProcessor(image_processor=hf_image_processor, tokenizer=tok, video_processor=None,
                             image_seq_length=256)


def test_tokens_and_pixels_equal_internvl_processor(tmp_path, photos, internvl_processor):
    proc = internvl_processor
    tok = proc.tokenizer
    msgs = [{"role": "user", "content": "<image>\nCompare the two pictures. <image>"},
            {"role": "assistant", "content": "A cup of coffee and a page of text."}]
    rec = {"messages": msgs, "images": [str(photos / "coffee.png"), str(photos / "page.png")]}
    (tmp_path / "d.jsonl").write_text(json.dumps(rec) + "\n")
    cfg = data_config_from_dict({"source": "files", "paths": [str(tmp_path / "d.jsonl")], "tokens_per_micro_batch": 4096,
                                 "vision": {}})
    ds = build_vl_dataset(cfg, tokenizer=tok)
    rendered = tok.apply_chat_template([{**m, "content": m["content"].replace("<image>", "<IMG_CONTEXT>")}
                                        for m in msgs], tokenize=False)
    from PIL import Image
    ref = proc(images=[Image.open(photos / "coffee.png"), Image.open(photos / "page.png")], text=[rendered],
               return_tensors="pt")
    assert ds.tokens.tolist() == ref["input_ids"][0].tolist()
    assert int((ds.tokens == tok.context_image_token_id).sum()) == (7 + 3) * 256
    assert torch.equal(document_pixels(ds, 0, cfg.vision), ref["pixel_values"])
    # loss only on the assistant's turn: no image token, no user text is a target
    assert not ds.loss_mask[ds.tokens == tok.context_image_token_id].any()
    answer = tok.decode(ds.tokens[ds.loss_mask])
    assert answer.endswith("A cup of coffee and a page of text.<|im_end|>") and "Compare" not in answer


def test_openai_content_list_equals_images_field(tmp_path, photos, qwen3):
    a = {"messages": [{"role": "user", "content": "<image>\nWhat is this?"},
                      {"role": "assistant", "content": "A cat."}], "images": ["chelsea.png"]}
    b = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "chelsea.png"}},
                                                   {"type": "text", "text": "What is this?"}]},
                      {"role": "assistant", "content": "A cat."}]}
    c = {"messages": [{"role": "user", "content": "What is this?"}, a["messages"][1]],
         "images": ["chelsea.png"]}  # no placeholder: the image goes first
    for name, rec in (("a", a), ("b", b), ("c", c)):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(rec) + "\n")
    import shutil
    shutil.copy(photos / "chelsea.png", tmp_path / "chelsea.png")
    got = []
    for name in "abc":
        cfg = data_config_from_dict({"source": "files", "paths": [str(tmp_path / f"{name}.jsonl")],
                                     "tokens_per_micro_batch": 4096, "vision": QWEN_VISION})
        got.append(build_vl_dataset(cfg, qwen3).tokens.tolist())
    assert got[0] == got[1] == got[2]
    assert got[0].count(151655) == 7 * 256  # chelsea 451x300 -> 3x2 tiles + thumbnail


def test_bad_images_name_the_record_or_are_skipped(tmp_path, qwen3):
    good = {"messages": [{"role": "user", "content": "<image> hi"}, {"role": "assistant", "content": "ok"}],
            "images": [str(asset_path("skimage-data") / "camera.png")]}
    (tmp_path / "broken.png").write_bytes(b"not a png")
    lines = [good, {**good, "images": ["missing.png"]}, {**good, "images": ["broken.png"]},
             {**good, "images": []}, {**good, "images": ["https://example.com/a.png"]}]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    raw = {"source": "files", "paths": [str(path)], "tokens_per_micro_batch": 4096, "vision": QWEN_VISION}
    with pytest.raises(DataError, match=r"d\.jsonl:2: image .*missing\.png.* does not exist"):
        build_vl_dataset(data_config_from_dict(raw), qwen3)
    ds = build_vl_dataset(data_config_from_dict({**raw, "on_error": "skip"}), qwen3)
    assert ds.num_documents == 1 and ds.skipped == 4
    reasons = "\n".join(ds.skipped_examples)
    assert "d.jsonl:3: image" in reasons and "cannot be read" in reasons
    assert "d.jsonl:4: 1 '<image>' placeholders in the messages but 0 images" in reasons
    assert "d.jsonl:5:" in reasons and "only local files" in reasons
    (tmp_path / "one.jsonl").write_text(json.dumps(good) + "\n")
    with pytest.raises(DataError, match=r"one\.jsonl:1: 274 tokens \(1 tiles x 256\) exceed"):
        build_vl_dataset(data_config_from_dict({**raw, "paths": [str(tmp_path / "one.jsonl")],
                                                "tokens_per_micro_batch": 100}), qwen3)
    with pytest.raises(DataError, match="data.vision.image_token: '<IMG_CONTEXT>' is not one token"):
        build_vl_dataset(data_config_from_dict({**raw, "vision": {}}), qwen3)


def test_digits_corpus_is_honest_and_packs_with_pixels(qwen3):
    import csv
    import gzip

    import numpy as np
    from PIL import Image

    cfg = data_config_from_dict({"source": "digits_vqa", "tokens_per_micro_batch": 256, "seed": 1,
                                 "vision": {"image_size": 56, "max_tiles": 1, "image_seq_length": 4, **QWEN_VISION}})
    ld = build_loader(cfg, tokenizer=qwen3)
    ds = ld.dataset
    assert ld.summary()["documents"] == 1797 == ld.summary()["images"] == ld.summary()["tiles"]
    rows = list(csv.reader(gzip.open(asset_path("sklearn-digits") / "digits.csv.gz", "rt")))
    for d in (0, 1, 2, 500, 1796):  # the answer states the label; the image is the 8x8 bitmap
        label = int(rows[d][64])
        answer = qwen3.decode(ds.tokens[ds.doc_offsets[d]:ds.doc_offsets[d + 1]][
            ds.loss_mask[ds.doc_offsets[d]:ds.doc_offsets[d + 1]]])
        assert f"{label}" in answer.split("</think>")[-1] and answer.count(str(label)) == 1, (d, answer)
        ink = 255 - np.asarray(Image.open(ds.images[d][0]), dtype=np.float64)
        assert np.abs(ink * 16 / 255 - np.array(rows[d][:64], dtype=np.float64).reshape(8, 8)).max() < 0.04
    b = next(ld)
    image = b["input_ids"] == 151655
    assert b["pixel_values"].shape == (int(image.sum()) // 4, 3, 56, 56) and len(b["cu_seqlens"]) > 2
    assert (b["labels"][image] == -100).all() and (b["labels"][image.roll(-1)] == -100).all()
    assert b["input_ids"].numel() <= 256


def test_loader_resumes_with_the_same_pixels_and_refuses_other_data(tmp_path, qwen3):
    raw = {"source": "digits_vqa", "tokens_per_micro_batch": 200, "seed": 3, "max_documents": 300,
           "vision": {"image_size": 28, "max_tiles": 1, "image_seq_length": 1, **QWEN_VISION}}
    a = build_loader(data_config_from_dict(raw), tokenizer=qwen3)
    for _ in range(3):
        next(a)
    state = a.state_dict()
    want = next(a)
    b = build_loader(data_config_from_dict(raw), tokenizer=qwen3)
    b.load_state_dict(state)
    got = next(b)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want if k != "max_seqlen")
    other = build_loader(data_config_from_dict({**raw, "max_documents": 299}), tokenizer=qwen3)
    with pytest.raises(DataError, match="loader state does not match"):
        other.load_state_dict(state)


@pytest.mark.parametrize("table,needle", [
    ({"mix": [{"source": "shakespeare"}, {"source": "digits_vqa"}]}, r"data\.mix.*add a \[data\.vision\] table"),
    ({"vision": {}, "mix": [{"source": "shakespeare"}, {"source": "brown"}]}, r"data\.mix.*has no image-text source"),
    ({"vision": {}, "mix": [{"source": "shakespeare", "images": True}, {"source": "digits_vqa"}]},
     r"images.*'shakespeare' is a text corpus"),
    ({"vision": {}, "mix": [{"source": "shakespeare"}, {"source": "digits_vqa", "images": False}]},
     r"images.*'digits_vqa' is an image-text corpus"),
])
def test_image_text_mixes_that_cannot_work_are_refused(table, needle):
    from xt.core.config import ConfigError
    from xt.data.config import data_config_from_dict
    with pytest.raises(ConfigError, match=needle):
        data_config_from_dict({"source": "mix", **table})


def test_generation_prompt_with_an_image_equals_internvl_processor(photos, internvl_processor):
    """`vl_prompt` (what `[sample]` with `image` feeds generation): ids and tiles equal the
    processor's on the rendered user turn with the generation prompt."""
    from PIL import Image

    from xt.data.vl_prompt import vl_prompt
    proc = internvl_processor
    ids, pixels = vl_prompt(proc.tokenizer, VisionDataConfig(), "What is in this picture?", [str(photos / "rocket.jpg")])
    rendered = proc.tokenizer.apply_chat_template([{"role": "user", "content": "<IMG_CONTEXT>\nWhat is in this picture?"}],
                                                  tokenize=False, add_generation_prompt=True, enable_thinking=False)
    ref = proc(images=[Image.open(photos / "rocket.jpg")], text=[rendered], return_tensors="pt")
    assert ids == ref["input_ids"][0].tolist() and ids.count(proc.tokenizer.context_image_token_id) % 256 == 0
    assert torch.equal(pixels, ref["pixel_values"]) and pixels.shape[0] > 1
    with pytest.raises(DataError, match=r"sample\.image: the prompt has 2 '<image>' placeholders for 1 image"):
        vl_prompt(proc.tokenizer, VisionDataConfig(), "<image> <image>", [str(photos / "rocket.jpg")])
    with pytest.raises(DataError, match=r"sample\.image: image .*nope\.png.* does not exist"):
        vl_prompt(proc.tokenizer, VisionDataConfig(), "hi", ["nope.png"])


def test_a_corpus_image_reference(qwen3):
    from xt.data.image_corpora import corpus_image, corpus_jsonl
    from xt.data.vl_prompt import vl_prompt
    assert corpus_image("digits_vqa:7") == corpus_jsonl("digits_vqa").parent / "images" / "0007.png"
    assert corpus_image("some/file.png") == Path("some/file.png")
    with pytest.raises(DataError, match=r"'digits_vqa:5000': digits_vqa has 1797 records"):
        corpus_image("digits_vqa:5000")
    spec = VisionDataConfig(image_size=32, max_tiles=1, image_seq_length=16, **QWEN_VISION)
    ids, pixels = vl_prompt(qwen3, spec, "Which digit is handwritten in this image?", ["digits_vqa:7"])
    assert ids.count(151655) == 16 and pixels.shape == (1, 3, 32, 32)
