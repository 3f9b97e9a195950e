"""xt.core.seeded_init: any row range of a parameter equals the same rows of the full tensor, the
draws have the requested statistics, and the scheme depends on name, seed and global shape only."""
from __future__ import annotations

import pytest
import torch

from xt.core.seeded_init import CHUNK_ELEMENTS, InitRule, init_rows, rows_per_chunk

SHAPES = [(37, 3, 5), (3 * CHUNK_ELEMENTS // 1000 + 7, 1000), (5,), ()]


@pytest.mark.parametrize("shape", SHAPES)
def test_row_ranges_equal_rows_of_the_full_tensor(shape):
    rule = InitRule("normal", 0.5)
    rows = shape[0] if shape else 1
    full = init_rows(rule, "w", shape, 0, rows, base_seed=11)
    assert full.shape == torch.Size(shape)
    per = rows_per_chunk(shape)
    cuts = sorted({0, rows, 1 % (rows + 1), per % (rows + 1), min(rows, per + 3), rows // 3, rows - 1 if rows else 0})
    for a in cuts:
        for b in cuts:
            if a <= b and (shape or (a, b) == (0, 1)):
                part = init_rows(rule, "w", shape, a, b, base_seed=11)
                assert torch.equal(part, full[a:b] if shape else full), (a, b)


def test_statistics_and_seed_dependence():
    shape = (2048, 512)  # one chunk of 2**20 values... and more
    x = init_rows(InitRule("normal", 0.02), "layer.w", shape, 0, shape[0], base_seed=5).double()
    n = x.numel()
    assert abs(x.mean().item()) < 4 * 0.02 / n ** 0.5
    assert abs(x.std().item() / 0.02 - 1) < 4 / (2 * n) ** 0.5
    same = init_rows(InitRule("normal", 0.02), "layer.w", shape, 0, shape[0], base_seed=5)
    assert torch.equal(same, x.float())
    for other in [init_rows(InitRule("normal", 0.02), "layer.v", shape, 0, shape[0], base_seed=5),
                  init_rows(InitRule("normal", 0.02), "layer.w", shape, 0, shape[0], base_seed=6)]:
        assert (other != x.float()).float().mean() > 0.99
    assert torch.equal(init_rows(InitRule("ones"), "n", (4, 2), 1, 3, 0, torch.float64), torch.ones(2, 2, dtype=torch.float64))
    assert torch.equal(init_rows(InitRule("zeros"), "b", (4,), 0, 4, 0), torch.zeros(4))


def test_bad_rule_and_range_are_named():
    with pytest.raises(ValueError, match="w: unknown init kind 'uniform'"):
        init_rows(InitRule("uniform", 1.0), "w", (3,), 0, 3, 0)
    with pytest.raises(ValueError, match=r"w: rows \[2, 5\) of shape \(3,\) do not fit dim 0"):
        init_rows(InitRule("normal", 1.0), "w", (3,), 2, 5, 0)


def test_draws_ignore_an_ambient_default_device():
    """Inside ``with torch.device(...)`` (how `build_model(device="cuda")` constructs) the chunks
    are still drawn on the CPU from their own generators: the same values as outside it."""
    rule = InitRule("normal", 0.02)
    want = init_rows(rule, "model.layers.0.w", (6, 5), 1, 5, 7)
    with torch.device("meta"):
        got = init_rows(rule, "model.layers.0.w", (6, 5), 1, 5, 7)
    assert got.device.type == "cpu" and torch.equal(got, want)
