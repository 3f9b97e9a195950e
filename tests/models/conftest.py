"""Fixtures of the Qwen3 / Qwen3-MoE tests; helpers live in qwen3_helpers.py."""
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
