"""`VLPackedLoader`: packed image-text micro-batches with their tiles.

The text side is `xt.data.packed_loader.PackedLoader` unchanged (seeded order, greedy packing, resumable
data-parallel stream); a conversation is one chunk, never split (`xt.data.vl_dataset`). Each
micro-batch adds ``pixel_values [N, 3, S, S]`` float32: the tiles of its documents' images in
document and placeholder order, which is the order of the image-token runs in ``input_ids``
(docs/contracts.md, Batches). Images are read and tiled when the micro-batch is built.
"""
from __future__ import annotations

import torch

from xt.data.errors import DataError
from xt.data.images import image_tiles, load_image
from xt.data.vision_config import VisionDataConfig
from xt.data.packed_loader import PackedLoader
from xt.data.vl_dataset import VLDataset

__all__ = ["VLPackedLoader", "TextPackedLoader", "document_pixels"]


def document_pixels(ds: VLDataset, doc: int, spec: VisionDataConfig) -> torch.Tensor:
    """``[n, 3, S, S]`` the tiles of document `doc`'s images (n = the sum of its tile counts).

    Raises:
        DataError: an image that went missing or broke since the data set was read (naming the record).
    """
    tiles = [image_tiles(load_image(p, ds.wheres[doc]), spec) for p in ds.images[doc]]
    for p, t, want in zip(ds.images[doc], tiles, ds.tiles[doc]):
        if t.shape[0] != want:
            raise DataError(f"{ds.wheres[doc]}: image {str(p)!r} changed since the data was read ({t.shape[0]} "
                            f"tiles now, {want} then); restart the run")
    return torch.cat(tiles) if tiles else torch.zeros(0, 3, spec.image_size, spec.image_size)


class VLPackedLoader(PackedLoader):
    """`PackedLoader` over a `VLDataset` whose micro-batches carry ``pixel_values``.

    Args:
        dataset: the tokenized image-text documents (each within ``chunk_len``).
        spec: tiling and normalisation (``data.vision``).
        other arguments: as `PackedLoader`.
    """

    def __init__(self, dataset: VLDataset, spec: VisionDataConfig, tokens_per_micro_batch: int, chunk_len: int | None = None,
                 seed: int = 0, shuffle: bool = True, dp_rank: int = 0, dp_size: int = 1):
        super().__init__(dataset, tokens_per_micro_batch, chunk_len, seed, shuffle, dp_rank, dp_size)
        if self.num_chunks != dataset.num_documents:
            raise ValueError("VLPackedLoader: a document is longer than chunk_len (build_vl_dataset filters them)")
        self.spec = spec

    def batch_at(self, pos: tuple[int, int]) -> dict:
        """The packed micro-batch at ``(epoch, index)`` plus ``pixel_values``."""
        batch = super().batch_at(pos)
        docs = self.chunk_ids(pos).tolist()
        batch["pixel_values"] = torch.cat([document_pixels(self.dataset, d, self.spec) for d in docs])
        return batch

    def summary(self) -> dict:
        """`PackedLoader.summary` plus the images and tiles of the data set."""
        return {**super().summary(), "images": sum(len(i) for i in self.dataset.images),
                "tiles": sum(sum(t) for t in self.dataset.tiles)}


class TextPackedLoader(PackedLoader):
    """`PackedLoader` of a text source in an image-text run (a text source of a data mix): its
    micro-batches carry an empty ``pixel_values [0, 3, S, S]``, so every micro-batch of the run has
    the same keys; the model then runs no tile (`xt.models.internvl` gives the vision tower zero
    gradients).

    Args:
        dataset: tokenized text documents (split into chunks as for any text source).
        spec: the run's ``data.vision`` (for the tile size S).
        other arguments: as `PackedLoader`.
    """

    def __init__(self, dataset, spec: VisionDataConfig, tokens_per_micro_batch: int, chunk_len: int | None = None,
                 seed: int = 0, shuffle: bool = True, dp_rank: int = 0, dp_size: int = 1):
        super().__init__(dataset, tokens_per_micro_batch, chunk_len, seed, shuffle, dp_rank, dp_size)
        self.spec = spec

    def batch_at(self, pos: tuple[int, int]) -> dict:
        """The packed micro-batch at ``(epoch, index)`` plus an empty ``pixel_values``."""
        return {**super().batch_at(pos), "pixel_values": torch.zeros(0, 3, self.spec.image_size, self.spec.image_size)}
