"""`xt convert`: XT training checkpoints (torch DCP) ⇄ HF checkpoint folders (safetensors).

An XT checkpoint (``runs/NAME/checkpoints/step-N``) holds model and optimizer state as a torch
distributed checkpoint, resharded on load to any layout; an HF folder holds ``config.json`` and
safetensors with transformers' key names.

* XT → HF needs the run's config (for the architecture, the tokenizer and
  ``checkpoint.hf_max_shard_size``; by default the ``config.toml`` that `xt train` saved in the
  run folder) and writes an HF folder
  that ``transformers.AutoTokenizer`` and ``AutoModelForCausalLM.from_pretrained`` load (weights,
  ``config.json``, ``generation_config.json``, the tokenizer files and chat template).
* HF → XT writes a weights-only DCP folder (``config.json`` + ``model/``), which
  ``model.init_from`` accepts like an HF folder: large models then load sharded in parallel.
* GGUF → HF: a ``.gguf`` file or a pinned asset ``asset:NAME`` (`xt.cli.gguf`) becomes an HF folder
  with its tokenizer (e.g. ``xt convert asset:smollm2-135m-instruct-gguf runs/smollm2``).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from xt.cli.config import load_xt_config
from xt.cli.config_cmd import RUN_CONFIG
from xt.cli.gguf import gguf_to_hf, resolve_gguf
from xt.core.checkpoint.layout import is_complete
from xt.data import save_tokenizer
from xt.models import build_run_model, from_pretrained, save_pretrained, save_xt_weights
from xt.models.weights import is_hf_folder, load_training_checkpoint

__all__ = ["convert_checkpoint"]


def convert_checkpoint(src: str | Path, dst: str | Path, config: str | Path | None = None) -> Path:
    """Convert `src` to the other format in `dst` (module docstring); returns `dst`.

    The destination is written into ``dst.tmp`` and renamed, so a failed conversion never leaves
    a half-written folder under `dst`.

    Raises:
        FileNotFoundError: `src` does not exist.
        ValueError: `src` is none of the formats; XT → HF without `config` and without the
            ``config.toml`` that `xt train` keeps in the run folder; `dst` exists.
        xt.core.config.ConfigError: bad `config`.
    """
    gguf = resolve_gguf(src)
    src, dst = Path(src), Path(dst)
    if gguf is None and not src.exists():
        raise FileNotFoundError(f"xt convert: source {src} does not exist")
    if dst.exists():
        raise ValueError(f"xt convert: destination {dst} exists; remove it or choose another")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if gguf is not None:
        gguf_to_hf(gguf, tmp)
    elif is_complete(src):
        if config is None:
            saved = src.parent.parent / RUN_CONFIG  # runs/NAME/checkpoints/step-N -> runs/NAME/config.toml
            if not saved.is_file():
                raise ValueError(f"xt convert: {saved} does not exist; give the run's TOML with --config "
                                 "(it says the architecture and the tokenizer)")
            config = saved
        cfg = load_xt_config(config)
        model = build_run_model(cfg.model, device="cpu")
        load_training_checkpoint(model, src)
        save_pretrained(model, tmp, max_shard_size=cfg.checkpoint.hf_max_shard_size)
        save_tokenizer(cfg.data.tokenizer, tmp)
    elif is_hf_folder(src):
        save_xt_weights(from_pretrained(src), tmp)
    else:
        raise ValueError(f"xt convert: {src} is neither an XT checkpoint (checkpoints/step-N with meta.json) "
                         "nor an HF folder (config.json + *.safetensors)")
    os.replace(tmp, dst)
    return dst
