"""Backend registry and the ``[kernels]`` config section."""
from __future__ import annotations

import msgspec
import pytest
import torch

from _refs import rel
from xt.kernels.config import KernelsConfig, apply_kernels_config
from xt.kernels.moe import backends, grouped_gemm
from xt.kernels.moe.grouped_gemm import grouped_gemm_reference


@pytest.fixture(autouse=True)
def _restore_backends():
    saved = {op: backends.get_backend(op) for op in backends.OPS}
    yield
    for op, name in saved.items():
        backends.set_backend(op, name)


def test_set_backend_routes_calls_and_validates_names():
    backends.set_backend("grouped_gemm", "reference")
    assert backends.dispatch("grouped_gemm") is grouped_gemm_reference
    backends.set_backend("permute", "torch")
    assert backends.get_backend("unpermute") == "torch"
    with pytest.raises(ValueError, match="unknown backend"):
        backends.set_backend("loss", "cudnn")
    with pytest.raises(ValueError, match="unknown op"):
        backends.dispatch("attention")


def test_auto_on_cpu_uses_torch_grouped_mm_and_matches_reference():
    x = torch.randn(7, 16, dtype=torch.float32)
    w = torch.randn(3, 16, 8)
    c = torch.tensor([2, 0, 5])
    assert backends.choose_grouped_gemm(x, w, c, False) == "torch"
    assert backends.choose_grouped_gemm(x.double(), w.double(), c, False) == "loop"
    y = grouped_gemm(x, w, c, backend="auto")
    assert rel(y, grouped_gemm_reference(x.double(), w.double(), c)) <= 1e-6


def test_kernels_config_validates_and_applies():
    cfg = msgspec.convert({"grouped_gemm": "torch", "permute": "reference"}, KernelsConfig)
    assert cfg.loss == "auto"
    apply_kernels_config(cfg)
    assert backends.get_backend("grouped_gemm") == "torch"
    assert backends.get_backend("unpermute") == "reference"
    with pytest.raises(msgspec.ValidationError, match=r"\$\.grouped_gemm"):
        msgspec.convert({"grouped_gemm": "fastest"}, KernelsConfig)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"grouped_gem": "auto"}, KernelsConfig)
    with pytest.raises(ValueError, match="kernels.loss"):
        KernelsConfig(loss="fused")


@pytest.mark.parametrize("dtype,k,n", [(torch.float32, 5, 6), (torch.bfloat16, 12, 6), (torch.float16, 8, 12)])
def test_auto_falls_back_for_unaligned_sizes(dtype, k, n):
    """`auto` must not pick torch._grouped_mm (16-byte rows) for unaligned K/N: it runs the loop and
    agrees with the float64 reference, gradients included."""
    from xt.kernels.moe import grouped_gemm, grouped_gemm_reference
    g = torch.Generator().manual_seed(1)
    counts = torch.tensor([3, 0, 7])
    x = torch.randn(10, k, generator=g).to(dtype).requires_grad_()
    w = torch.randn(3, n, k, generator=g).to(dtype).requires_grad_()
    y = grouped_gemm(x, w, counts, trans_b=True, backend="auto")
    ref = grouped_gemm_reference(x.detach().double(), w.detach().double(), counts, True)
    assert (y.double() - ref).norm() / ref.norm() < (1e-6 if dtype == torch.float32 else 1e-2)
    y.float().sum().backward()
    assert w.grad[1].abs().max() == 0
