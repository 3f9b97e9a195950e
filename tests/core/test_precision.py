"""`train.dtype` resolution: "auto" takes bf16 only where it is native; explicit bf16 on a CPU that
emulates it runs, with one warning naming the measured slowdown."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
import torch
from rich.console import Console

from xt.core.config import TrainConfig
from xt.core.engine import precision
from xt.core.engine.precision import CpuBf16, cpu_bf16_support, resolve_precision

CPU = torch.device("cpu")
NATIVE = CpuBf16(True, "AVX512", "AMX+AVX512_BF16", 0.3)
EMULATED = CpuBf16(False, "AVX2", "none", None)

# Limits torch's dispatch and oneDNN to AVX2 on any x86 CPU: what a CPU without bf16 instructions runs.
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def test_default_is_auto():
    assert TrainConfig().dtype == "auto"


@pytest.mark.parametrize("info,dtype,want", [(NATIVE, "auto", torch.bfloat16), (EMULATED, "auto", None),
                                             (NATIVE, "bf16", torch.bfloat16), (EMULATED, "bf16", torch.bfloat16),
                                             (NATIVE, "fp32", None), (EMULATED, "fp32", None)])
def test_cpu_resolution(monkeypatch, info, dtype, want):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: info)
    monkeypatch.setattr(precision, "measure_bf16_slowdown", lambda: 37.6)
    p = resolve_precision(dtype, CPU)
    assert p.autocast_dtype == want and p.name == ("bf16" if want else "fp32")
    assert (p.warning is not None) == (dtype == "bf16" and not info.native)
    if p.warning:
        assert "emulated" in p.warning and "38x slower" in p.warning and "30-40x" in p.warning and "'auto' or 'fp32'" in p.warning
    if dtype == "auto" and not info.native:
        assert "no native bf16" in p.reason and "AVX2" in p.reason


def test_bad_dtype_is_refused():
    with pytest.raises(ValueError, match="train.dtype"):
        resolve_precision("fp16", CPU)


def test_avx2_cpu_is_detected_as_emulated():
    """With dispatch and oneDNN limited to AVX2 (any x86 CPU), bf16 is not native, `auto` runs fp32
    and the measured bf16 slowdown is large; measured in a fresh process (the env is read at start)."""
    code = ("from xt.core.engine.precision import cpu_bf16_support, measure_bf16_slowdown, resolve_precision\n"
            "import torch\ni = cpu_bf16_support()\n"
            "print(i.native, resolve_precision('auto', torch.device('cpu')).name, round(measure_bf16_slowdown()))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **AVX2_ENV}, capture_output=True,
                         text=True, check=True, timeout=120).stdout.split()
    assert out[:2] == ["False", "fp32"]
    if torch.backends.cpu.get_cpu_capability() != "DEFAULT":  # x86 with AVX2 at least
        assert int(out[2]) >= 3


def test_native_claim_is_consistent_with_torch():
    info = cpu_bf16_support()
    if info.native:
        assert info.isa != "none" and info.slowdown is not None and info.slowdown < 3.0
    if info.isa == "none":
        assert not info.native


def test_trainer_warns_once_for_emulated_bf16(monkeypatch, tmp_path):
    from xt.core.engine import Trainer
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: EMULATED)
    monkeypatch.setattr(precision, "measure_bf16_slowdown", lambda: 30.0)

    class Loader:
        def __iter__(self):
            return iter(())

        def state_dict(self):
            return {}

        def load_state_dict(self, s):
            pass

    buf = io.StringIO()
    tr = Trainer(torch.nn.Linear(2, 2), Loader(), TrainConfig(steps=1, dtype="bf16", out_dir=str(tmp_path)),
                 console=Console(file=buf, width=300))
    assert tr.autocast_dtype == torch.bfloat16
    assert buf.getvalue().count("bf16 matmuls are emulated") == 1
    buf2 = io.StringIO()
    tr = Trainer(torch.nn.Linear(2, 2), Loader(), TrainConfig(steps=1, out_dir=str(tmp_path)),
                 console=Console(file=buf2, width=300))
    assert tr.autocast_dtype is None and buf2.getvalue() == ""


@pytest.mark.gpu
def test_cuda_auto_is_bf16():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    p = resolve_precision("auto", torch.device("cuda", 0))
    assert p.autocast_dtype == torch.bfloat16 and p.warning is None and torch.cuda.get_device_name(0) in p.reason
