"""Built-in image-text corpora, made from real images that registry packages ship.

| name | images | conversations |
|---|---|---|
| ``digits_vqa`` | the 1,797 8x8 handwritten digits of scikit-learn (UCI optical digits, asset ``sklearn-digits``) | one question about each image, answered from its label |

The questions and answers come from the labels only, so every answer is true: "Which digit is
handwritten in this image?" -> "The digit 7."; "What number does this picture show? Reply with one
digit." -> "7"; "Is the handwritten digit in this image even or odd?" -> "It is 7, an odd digit."
(question ``i % 3`` for image i). The corpus is written once into ``$XT_CACHE/corpora/NAME-vN/``
(``train.jsonl`` and ``images/*.png``: dark ink on white, 0..16 scaled to 255..0), in a temporary
folder renamed into place, and read from there as ``data.source = "files"`` JSONL would be.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

from xt.data.assets import asset_path, cache_dir
from xt.data.errors import DataError

__all__ = ["IMAGE_CORPORA", "corpus_jsonl", "corpus_image", "digit_conversation"]

IMAGE_CORPORA = {"digits_vqa": "sklearn-digits"}
_VERSION = 1


def digit_conversation(i: int, label: int, image: str) -> dict:
    """The record of digit image `i` (label 0..9): ``{"messages": [user, assistant], "images": [image]}``."""
    kind = i % 3
    if kind == 0:
        q, a = "Which digit is handwritten in this image?", f"The digit {label}."
    elif kind == 1:
        q, a = "What number does this picture show? Reply with one digit.", f"{label}"
    else:
        parity = "an even" if label % 2 == 0 else "an odd"
        q, a = "Is the handwritten digit in this image even or odd?", f"It is {label}, {parity} digit."
    return {"messages": [{"role": "user", "content": f"<image>\n{q}"}, {"role": "assistant", "content": a}],
            "images": [image]}


def _write_digits(src: Path, out: Path) -> int:
    import numpy as np
    from PIL import Image

    rows = np.loadtxt(gzip.open(src / "digits.csv.gz", "rt"), delimiter=",", dtype=np.int64)
    (out / "images").mkdir()
    with open(out / "train.jsonl", "w") as f:
        for i, row in enumerate(rows):
            pixels, label = row[:64].reshape(8, 8), int(row[64])
            name = f"images/{i:04d}.png"
            Image.fromarray((255 - np.rint(pixels * 255 / 16)).astype(np.uint8), mode="L").save(out / name)
            f.write(json.dumps(digit_conversation(i, label, name)) + "\n")
    return len(rows)


def corpus_jsonl(name: str) -> Path:
    """The ``train.jsonl`` of image corpus `name`, built on first use (its asset fetched if needed).

    Raises:
        DataError: unknown name (lists the known ones); AssetError / ChecksumError from the fetch.
    """
    if name not in IMAGE_CORPORA:
        raise DataError(f"data.source: unknown image corpus {name!r}; built-in: {sorted(IMAGE_CORPORA)}")
    target = cache_dir() / "corpora" / f"{name}-v{_VERSION}"
    if (target / "train.jsonl").is_file():
        return target / "train.jsonl"
    src = asset_path(IMAGE_CORPORA[name])
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        staging = Path(tmp) / "out"
        staging.mkdir()
        _write_digits(src, staging)
        if not (target / "train.jsonl").is_file():
            if target.exists():
                shutil.rmtree(target)
            os.rename(staging, target)
    return target / "train.jsonl"


def corpus_image(ref: str | Path) -> Path:
    """The file an image reference names: ``CORPUS:N`` is the image of record N (from 0) of the
    built-in image corpus CORPUS (e.g. ``digits_vqa:7``, built on first use); anything else is a path.

    Raises:
        DataError: a record number the corpus does not have.
    """
    name, _, index = str(ref).partition(":")
    if name not in IMAGE_CORPORA or not index.isdigit():
        return Path(ref)
    path = corpus_jsonl(name)
    with open(path) as f:
        for i, line in enumerate(f):
            if i == int(index):
                return path.parent / json.loads(line)["images"][0]
    raise DataError(f"image {str(ref)!r}: {name} has {i + 1} records (0..{i})")
