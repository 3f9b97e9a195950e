"""Preflight of a vision-language run: ``[data.vision]`` must fit the model it feeds.

The tiles' size, the placeholder tokens per tile and the placeholder token itself are set twice,
once for the data (``data.vision``) and once in the model's ``config.json`` (``vision_config
.image_size``, ``image_seq_length``, ``image_token_id``); a mismatch would only show as a wrong
count deep inside the first forward, or not at all. `check_vision_data` compares them first.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from xt.core.config import config_error_at
from xt.data import DataConfig, load_tokenizer
from xt.models import ModelSection, section_config

__all__ = ["check_vision_data", "check_sample_image"]


def check_vision_data(model: ModelSection, data: DataConfig, config: str | Path | None,
                      overrides: Sequence[str] = ()) -> None:
    """Check ``[data.vision]`` against the model of ``[model]`` (no model is built).

    Raises:
        xt.core.config.ConfigError: image data for a model without a vision tower, or a tile size,
            tokens per tile or placeholder token that differs from the model's (naming the
            ``data.vision`` key, its file and line, and the model's value).
    """
    if data.vision is None:
        return
    mc = section_config(model)
    v = data.vision

    def fail(key: str, msg: str):
        return config_error_at(key, f"`{key}`: {msg}", path=config, overrides=overrides)

    if getattr(mc, "vision_config", None) is None:
        raise fail("data.vision", f"image-text data needs a vision-language model; {type(mc).__name__} takes no "
                                  "images (use InternVLForConditionalGeneration, or remove [data.vision])")
    if v.image_size != mc.vision_config.image_size[0]:
        raise fail("data.vision.image_size", f"{v.image_size}, but the model's tiles are "
                                             f"vision_config.image_size = {mc.vision_config.image_size[0]}")
    if v.image_seq_length != mc.image_seq_length:
        raise fail("data.vision.image_seq_length", f"{v.image_seq_length}, but the model turns a tile into "
                                                   f"image_seq_length = {mc.image_seq_length} tokens")
    tid = load_tokenizer(data.tokenizer).convert_tokens_to_ids(v.image_token)
    if tid != mc.image_token_id:
        raise fail("data.vision.image_token", f"{v.image_token!r} is token {tid} of {data.tokenizer!r}, but the "
                                              f"model's image_token_id is {mc.image_token_id}")


def check_sample_image(image: str, max_new_tokens: int, data: DataConfig, config: str | Path | None,
                       overrides: Sequence[str] = ()) -> None:
    """``sample.image`` (when a sample is printed): it needs image data (``[data.vision]``) and must
    open (a file, or ``CORPUS:N`` of a built-in image corpus).

    Raises:
        xt.core.config.ConfigError: naming ``sample.image``, its file and line.
    """
    if not image or not max_new_tokens:
        return
    from xt.data import DataError
    from xt.data.image_corpora import corpus_image
    from xt.data.images import load_image

    def fail(msg: str):
        return config_error_at("sample.image", f"`sample.image`: {msg}", path=config, overrides=overrides)

    if data.vision is None:
        raise fail("an image prompt needs a vision-language run with [data.vision]")
    try:
        load_image(corpus_image(image), "sample.image")
    except DataError as e:
        raise fail(str(e)) from None
