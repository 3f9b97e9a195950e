"""A generation prompt with images: one user turn rendered with the chat template (generation
prompt added, thinking off, as `xt train`'s text ``[sample]``), each image's place written as
``start_token image_token end_token`` and ``image_token`` expanded to ``tiles * image_seq_length``
copies, exactly as `xt.data.vl_dataset` does for training records, with the image's tiles.

An image reference is a local file or ``CORPUS:N``, the image of record N of a built-in image corpus
(e.g. ``digits_vqa:7``; `xt.data.image_corpora.corpus_image`).
"""
from __future__ import annotations

import torch

from xt.data.errors import DataError
from xt.data.image_corpora import corpus_image
from xt.data.images import image_tiles, load_image
from xt.data.vision_config import VisionDataConfig
from xt.data.vl_dataset import expand_image_tokens

__all__ = ["vl_prompt"]


def vl_prompt(tokenizer, vision: VisionDataConfig, text: str, images: list[str],
              where: str = "sample.image") -> tuple[list[int], torch.Tensor]:
    """``(token ids, pixel_values [N, 3, S, S] float32)`` of the user turn `text` with `images`.

    `text` marks each image's place with ``vision.placeholder`` (``<image>``); without any, the
    images go before the text, one per line (as for records).

    Raises:
        DataError: naming `where`: a placeholder count other than the number of images, an image
            that is missing or unreadable, or an image token the tokenizer lacks.
    """
    ph, n = vision.placeholder, text.count(vision.placeholder)
    if n == 0:
        text = "\n".join([ph] * len(images) + [text])
    elif n != len(images):
        raise DataError(f"{where}: the prompt has {n} {ph!r} placeholders for {len(images)} image(s)")
    image_id = tokenizer.convert_tokens_to_ids(vision.image_token)
    if image_id is None or image_id == tokenizer.unk_token_id:
        raise DataError(f"{where}: data.vision.image_token {vision.image_token!r} is not a token of the tokenizer")
    content = text.replace(ph, f"{vision.start_token}{vision.image_token}{vision.end_token}")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=True,
                                        add_generation_prompt=True, enable_thinking=False)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    if ids.count(image_id) != len(images):
        raise DataError(f"{where}: the prompt text holds the image token {vision.image_token!r} itself")
    tiles = [image_tiles(load_image(corpus_image(ref), where), vision) for ref in images]
    ids, _ = expand_image_tokens(ids, torch.ones(len(ids), dtype=torch.bool), image_id,
                                 [t.shape[0] * vision.image_seq_length for t in tiles])
    pixels = torch.cat(tiles) if tiles else torch.zeros(0, 3, vision.image_size, vision.image_size)
    return ids, pixels
