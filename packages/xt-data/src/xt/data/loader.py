"""`build_loader`: the loader of a ``[data]`` section (`xt.data.packed_loader.PackedLoader`, the
image-text `xt.data.vl_loader.VLPackedLoader`, or a `xt.data.mixing.MixedLoader`)."""
from __future__ import annotations

from xt.data.config import DataConfig
from xt.data.dataset import build_dataset
from xt.data.mixing import MixedLoader, mix_parts
from xt.data.packed_loader import STATE_VERSION, PackedLoader

__all__ = ["build_loader", "PackedLoader", "STATE_VERSION"]


def build_loader(cfg: DataConfig, dp_rank: int = 0, dp_size: int = 1, tokenizer=None,
                 eval_split: float = 0.0):
    """Read, tokenize (cached) and wrap the data of `cfg` in a `PackedLoader`.

    `tokenizer`, if given, must be the tokenizer named by ``cfg.tokenizer`` (saves loading it twice).
    `eval_split` > 0 leaves out the documents `xt.data.evaluation.split_dataset` holds out for
    evaluation (``eval.split``). ``source = "mix"`` gives a `xt.data.mixing.MixedLoader` over the
    ``[[data.mix]]`` sources instead (same contract); with ``[data.vision]`` its image-text sources'
    micro-batches carry their tiles and its text sources' an empty ``pixel_values``.

    Raises:
        xt.data.DataError: any data or configuration problem (file:line, field name).
    """
    if cfg.source == "mix":  # each source tokenized and cached like a single one, its own shuffle seed
        parts = mix_parts(cfg)
        loaders = [_source_loader(c, tokenizer, c.seed + i, cfg.vision) for i, (c, _) in enumerate(parts)]
        names = [c.source if c.source != "files" else ", ".join(c.paths) for c, _ in parts]
        return MixedLoader(loaders, [w for _, w in parts], names, dp_rank, dp_size)
    if cfg.vision is not None:
        from xt.data.vl_dataset import build_vl_dataset
        from xt.data.vl_loader import VLPackedLoader
        ds = build_vl_dataset(cfg, tokenizer)
        if eval_split:
            from xt.data.evaluation import split_dataset
            ds = split_dataset(ds, eval_split, cfg.seed)[0]
        return VLPackedLoader(ds, cfg.vision, cfg.tokens_per_micro_batch,
                              cfg.chunk_len, cfg.seed, cfg.shuffle, dp_rank, dp_size)
    ds = build_dataset(cfg, tokenizer)
    if eval_split:
        from xt.data.evaluation import split_dataset
        ds = split_dataset(ds, eval_split, cfg.seed)[0]
    return PackedLoader(ds, cfg.tokens_per_micro_batch, cfg.chunk_len, cfg.seed, cfg.shuffle,
                        dp_rank, dp_size)


def _source_loader(cfg: DataConfig, tokenizer, seed: int, run_vision):
    """The undivided loader of one source of a mix (the `MixedLoader` splits over ranks): image-text
    (``cfg.vision`` set), text in an image-text run (`run_vision` set: empty ``pixel_values``), or text."""
    if cfg.vision is not None:
        from xt.data.vl_dataset import build_vl_dataset
        from xt.data.vl_loader import VLPackedLoader
        return VLPackedLoader(build_vl_dataset(cfg, tokenizer), cfg.vision, cfg.tokens_per_micro_batch, cfg.chunk_len,
                              seed, cfg.shuffle)
    ds = build_dataset(cfg, tokenizer)
    if run_vision is not None:
        from xt.data.vl_loader import TextPackedLoader
        return TextPackedLoader(ds, run_vision, cfg.tokens_per_micro_batch, cfg.chunk_len, seed, cfg.shuffle)
    return PackedLoader(ds, cfg.tokens_per_micro_batch, cfg.chunk_len, seed, cfg.shuffle)
