"""The comparison the layout tests use: rounding noise on an exactly-zero gradient passes, a wrong
gradient on any tensor with a real gradient fails, parameters stay strictly relative."""
from __future__ import annotations

import torch

from parallel_layouts import TOL, mismatches


def _result(grads: dict, params: dict) -> dict:
    return {"loss": [1.0], "grad_norm": [1.0], "grads": grads, "params": params}


def test_noise_on_a_zero_gradient_is_not_a_mismatch_but_real_errors_are():
    g = torch.Generator().manual_seed(0)
    big, small = torch.randn(64, 64, generator=g), torch.randn(16, generator=g) * 1e-3
    params = {"w": torch.randn(8, generator=g)}
    ref = _result({"big": big, "small": small, "zero": torch.randn(32, generator=g) * 1e-8}, params)
    same = _result({"big": big.clone(), "small": small.clone(), "zero": torch.zeros(32)}, dict(params))
    assert mismatches(same, ref) == []
    # a wrong gradient on the small (1e-5 of the global norm, but real) tensor: caught
    wrong_small = _result({**same["grads"], "small": small * 0.5}, params)
    assert [m for m in mismatches(wrong_small, ref) if m.startswith("grads.small")]
    wrong_big = _result({**same["grads"], "big": big * (1 + 3 * TOL)}, params)
    assert [m for m in mismatches(wrong_big, ref) if m.startswith("grads.big")]
    wrong_param = _result(same["grads"], {"w": params["w"] * (1 + 3 * TOL)})
    assert [m for m in mismatches(wrong_param, ref) if m.startswith("params.w")]
