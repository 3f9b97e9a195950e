"""`VisionDataConfig`: the ``[data.vision]`` table, which makes ``[data]`` multimodal (image-text chat)."""
from __future__ import annotations

import math

from xt.core.config import ConfigStruct, require

__all__ = ["VisionDataConfig", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VisionDataConfig(ConfigStruct):
    """Images in chat records (``{"messages", "images"}`` or OpenAI-style content lists) and how
    they become tiles and placeholder tokens (InternVL preprocessing, `xt.data.images`).

    Attributes:
        image_size: tile side in pixels; must equal the model's ``vision_config.image_size``.
        min_tiles: fewest tiles of the dynamic grid (the thumbnail not counted).
        max_tiles: most tiles of the dynamic grid (InternVL: 12); 1 = one resized tile per image.
        use_thumbnail: add the whole image as one more tile when the grid has several.
        image_mean: per-channel mean subtracted after scaling pixels to [0, 1].
        image_std: per-channel divisor after the mean.
        image_seq_length: placeholder tokens per tile; must equal the model's ``image_seq_length``
            (``(image_size / patch_size)**2 * downsample_ratio**2``, 256 for InternVL).
        image_token: the placeholder token (the model's ``image_token_id``), repeated
            ``tiles * image_seq_length`` times per image; must be one token of the tokenizer.
        start_token: token written before each image's placeholders ("" = none).
        end_token: token written after them ("" = none).
        placeholder: the text that marks an image's place in a message's content (records with
            ``"images"``); an image with no placeholder anywhere goes before the first user text.
    """

    image_size: int = 448
    min_tiles: int = 1
    max_tiles: int = 12
    use_thumbnail: bool = True
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    image_seq_length: int = 256
    image_token: str = "<IMG_CONTEXT>"
    start_token: str = "<img>"
    end_token: str = "</img>"
    placeholder: str = "<image>"

    def __post_init__(self) -> None:
        """Range checks; raises `xt.core.config.ConfigFieldError` naming the field."""
        require(self.image_size >= 1, "image_size", f"must be >= 1, got {self.image_size}")
        require(self.min_tiles >= 1, "min_tiles", f"must be >= 1, got {self.min_tiles}")
        require(self.max_tiles >= self.min_tiles, "max_tiles",
                f"must be >= min_tiles={self.min_tiles}, got {self.max_tiles}")
        require(all(math.isfinite(s) and s > 0 for s in self.image_std), "image_std",
                f"must be three numbers > 0, got {list(self.image_std)}")
        require(all(math.isfinite(m) for m in self.image_mean), "image_mean",
                f"must be three finite numbers, got {list(self.image_mean)}")
        require(self.image_seq_length >= 1, "image_seq_length", f"must be >= 1, got {self.image_seq_length}")
        require(bool(self.image_token), "image_token", "must be a token of the tokenizer")
        require(bool(self.placeholder), "placeholder", "must be a non-empty marker such as '<image>'")
