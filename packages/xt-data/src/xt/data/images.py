"""InternVL image preprocessing on the data side: dynamic tiling into square tiles plus a
thumbnail, then rescaling to [0, 1] and per-channel normalisation.

The grid rule (InternVL 1.5, arXiv:2404.16821, sec. 3.2, as transformers' GOT-OCR2 / InternVL
image processor applies it): among all ``cols x rows`` grids with ``min_tiles <= cols*rows <=
max_tiles`` (ordered by tile count), take the one whose aspect ratio ``cols/rows`` is closest to
the image's ``width/height``; on a tie, a later (larger) grid wins while the image's area exceeds
half the grid's pixel area. The image is resized (bicubic) to ``cols*S x rows*S`` and cut into
``cols*rows`` tiles in row-major order; when there is more than one tile, the whole image resized
to ``S x S`` is appended as a thumbnail. Each tile then becomes ``image_seq_length`` placeholder
tokens.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from xt.data.errors import DataError
from xt.data.vision_config import VisionDataConfig

__all__ = ["tile_grid", "num_tiles", "load_image", "image_tiles"]


@lru_cache(maxsize=32)
def _grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    grids = [(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1)
             if min_tiles <= c * r <= max_tiles]
    return tuple(sorted(grids, key=lambda g: g[0] * g[1]))  # stable: same-count grids keep (c, r) order


def tile_grid(height: int, width: int, spec: VisionDataConfig) -> tuple[int, int]:
    """``(cols, rows)`` of the tiling of a ``height x width`` image (module docstring rule)."""
    ratio, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for c, r in _grids(spec.min_tiles, spec.max_tiles):
        diff = abs(ratio - c / r)
        if diff < best_diff:
            best, best_diff = (c, r), diff
        elif diff == best_diff and area > 0.5 * spec.image_size * spec.image_size * c * r:
            best = (c, r)
    return best


def num_tiles(height: int, width: int, spec: VisionDataConfig) -> int:
    """Tiles of one image, thumbnail included (1 when the grid is 1x1)."""
    c, r = tile_grid(height, width, spec)
    return c * r + (1 if spec.use_thumbnail and c * r > 1 else 0)


def load_image(path: str | Path, where: str):
    """Open an image file as an RGB ``PIL.Image`` (decoded now, so a broken file fails here).

    Raises:
        DataError: ``where: image PATH ...`` for a missing, unreadable or undecodable file.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{where}: image {str(p)!r} does not exist")
    try:
        with Image.open(p) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{where}: image {str(p)!r} cannot be decoded: {e}") from None


def _normalise(tile, spec: VisionDataConfig) -> np.ndarray:
    x = (np.asarray(tile, dtype=np.uint8).astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(spec.image_mean, dtype=np.float32)) / np.asarray(spec.image_std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def image_tiles(image, spec: VisionDataConfig) -> torch.Tensor:
    """An RGB ``PIL.Image`` -> normalised tiles ``[n, 3, S, S]`` float32 (n = :func:`num_tiles`).

    Resizing is PIL bicubic on the 8-bit image; values are ``(pixel / 255 - mean) / std``.
    """
    from PIL import Image

    S = spec.image_size
    c, r = tile_grid(image.height, image.width, spec)
    big = image.resize((c * S, r * S), Image.Resampling.BICUBIC)
    tiles = [big.crop((i % c * S, i // c * S, (i % c + 1) * S, (i // c + 1) * S)) for i in range(c * r)]
    if spec.use_thumbnail and len(tiles) > 1:
        tiles.append(image.resize((S, S), Image.Resampling.BICUBIC))
    return torch.from_numpy(np.stack([_normalise(t, spec) for t in tiles]))
