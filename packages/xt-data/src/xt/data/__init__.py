"""XT data: sources, tokenization, chat templates, packing, resumable loaders.

Main entry points (see packages/xt-data/README.md):
- `DataConfig` / `data_config_from_dict`: the ``[data]`` config section.
- `build_loader(cfg, dp_rank, dp_size)` → `PackedLoader` of contract micro-batches with
  `state_dict()` / `load_state_dict()`; with ``source = "mix"`` a `MixedLoader` over weighted
  ``[[data.mix]]`` sources (`MixSource`).
- `asset_path(name)`, `load_tokenizer(name_or_path)`, `save_tokenizer(name_or_path, folder)`: pinned real
  assets and tokenizers (saved next to an HF export).
- `EvalConfig` (the ``[eval]`` section), `build_eval_batches(data, eval, dp_rank, dp_size)`: held-out
  micro-batches (other files, or a split of the documents that `build_loader(..., eval_split=)` skips).
- `check_data(cfg)`: open the source and parse its first records (fail fast, `DataError`);
  `check_data_section(cfg, config, overrides)` also says where a bad ``data.KEY`` is set.
"""
from xt.data.assets import ASSETS, asset_path, cache_dir
from xt.data.check import check_data, check_data_section
from xt.data.config import DataConfig, MixSource, data_config_from_dict
from xt.data.dataset import TokenizedDataset, build_dataset, tokenize_source
from xt.data.errors import AssetError, ChecksumError, DataError
from xt.data.evaluation import EvalBatches, EvalConfig, build_eval_batches, eval_data_config, split_dataset
from xt.data.loader import PackedLoader, build_loader
from xt.data.mixing import MixedLoader, mix_parts
from xt.data.packing import IGNORE_INDEX, make_batch, pack_boundaries, split_documents
from xt.data.tokenizer import load_tokenizer, save_tokenizer

__all__ = ["ASSETS", "AssetError", "ChecksumError", "DataConfig", "DataError", "EvalBatches", "EvalConfig",
           "IGNORE_INDEX", "MixSource", "MixedLoader", "mix_parts", "build_eval_batches", "eval_data_config", "split_dataset",
           "PackedLoader", "TokenizedDataset", "asset_path", "build_dataset", "build_loader",
           "cache_dir", "check_data", "check_data_section", "data_config_from_dict", "load_tokenizer", "make_batch", "save_tokenizer",
           "pack_boundaries", "split_documents", "tokenize_source"]
