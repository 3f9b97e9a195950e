"""Which compute dtype a run uses: `train.dtype` ("auto", "bf16", "fp32") resolved for a device.

``"bf16"`` is mixed precision: fp32 master weights, gradients and AdamW state, with the forward
under ``torch.autocast(dtype=torch.bfloat16)``. It pays off only where the hardware multiplies bf16
natively: CUDA GPUs with bf16 support, and CPUs with AVX512_BF16 or AMX. Elsewhere (e.g. AVX2-only
CPUs) oneDNN emulates bf16 matmuls; measured on a 2-core AVX2 EPYC, ``[512,256] @ [256,37984]``
took 0.09 s in fp32 and 3.4 s in bf16 (38x), so a bf16 step is ~30-40x slower than fp32.

``"auto"`` (the default) picks bf16 where it is native and fp32 elsewhere; an explicit ``"bf16"``
on a CPU without native bf16 still runs, with a warning that names the measured slowdown.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch

__all__ = ["Precision", "CpuBf16", "cpu_bf16_support", "resolve_precision"]

# capability levels of torch's CPU dispatch that have no bf16 dot-product instructions
_NO_BF16_CAPABILITY = {"DEFAULT", "NO AVX", "AVX", "AVX2", "ZVECTOR", "Z VECTOR", "VSX"}


@dataclass(frozen=True)
class CpuBf16:
    """What this CPU does with bf16 matmuls.

    Attributes:
        native: True when bf16 matmuls run at least as fast as ~1/3 of fp32 ones (AVX512_BF16 or
            AMX reported by torch, and confirmed by `slowdown` when it was measured).
        capability: ``torch.backends.cpu.get_cpu_capability()`` (e.g. "AVX2", "AVX512").
        isa: the bf16 instruction sets torch reports ("AMX", "AVX512_BF16"), or "none".
        slowdown: measured time of a bf16 matmul over the same fp32 matmul (None if not
            measured); ~0.3 with AMX, ~30-40 where bf16 is emulated.
    """

    native: bool
    capability: str
    isa: str
    slowdown: float | None


@dataclass(frozen=True)
class Precision:
    """The resolved compute precision of a run.

    Attributes:
        name: "bf16" or "fp32" (what the run actually does).
        autocast_dtype: ``torch.bfloat16`` for bf16 autocast, None for plain fp32.
        reason: one line saying why (printed in the `xt train` banner).
        warning: set when the choice is slow on this machine (explicit bf16 on a CPU that
            emulates it); the caller prints it once.
    """

    name: str
    autocast_dtype: torch.dtype | None
    reason: str
    warning: str | None = None


def _flag(name: str) -> bool:
    fn = getattr(torch.cpu, name, None)  # private torch helpers (torch >= 2.3); absent = unknown
    try:
        return bool(fn()) if callable(fn) else False
    except RuntimeError:
        return False


def _time_matmul(dtype: torch.dtype, reps: int = 3) -> float:
    a = torch.randn(256, 512).to(dtype)
    b = torch.randn(512, 512).to(dtype)
    a @ b  # warm-up: oneDNN picks and JITs its kernel on the first call
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return best


def measure_bf16_slowdown() -> float:
    """Time of a ``[256,512] @ [512,512]`` matmul in bf16 over fp32 on the CPU (best of 3 each).

    Costs ~1 ms where bf16 is native and ~50 ms where it is emulated.
    """
    return _time_matmul(torch.bfloat16) / max(_time_matmul(torch.float32), 1e-9)


@functools.lru_cache(maxsize=1)
def cpu_bf16_support() -> CpuBf16:
    """Whether this CPU multiplies bf16 natively (cached for the process).

    torch's report decides first: the dispatch capability (which also honours
    ``ATEN_CPU_CAPABILITY``) must be above AVX2 and the CPU must report AVX512_BF16 or AMX. When it
    does, a quick timing confirms it, because oneDNN may still be limited to emulation (e.g.
    ``ONEDNN_MAX_CPU_ISA=AVX2``, or a hypervisor that hides the instructions): bf16 counts as
    native only when it measures under 3x the fp32 time.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    isa = [n for n, f in (("AMX", "_is_amx_tile_supported"), ("AVX512_BF16", "_is_avx512_bf16_supported"))
           if _flag(f)]
    if capability.upper() in _NO_BF16_CAPABILITY or not isa:
        return CpuBf16(False, capability, "+".join(isa) or "none", None)
    slowdown = measure_bf16_slowdown()
    return CpuBf16(slowdown < 3.0, capability, "+".join(isa), slowdown)


def _why_not_native(info: CpuBf16) -> str:
    if info.isa == "none":
        return f"capability {info.capability}, no AVX512_BF16 or AMX"
    if info.slowdown is None:
        return f"torch's CPU capability is {info.capability}: {info.isa} present but unused"
    return f"{info.isa} reported, but a bf16 matmul measured {info.slowdown:.0f}x slower than fp32"


def _emulated_warning(info: CpuBf16) -> str:
    slow = info.slowdown if info.slowdown is not None else measure_bf16_slowdown()
    return (f"train.dtype = 'bf16': bf16 matmuls are emulated on this CPU ({_why_not_native(info)}); "
            f"a small bf16 matmul measured {slow:.0f}x slower than in fp32 here, and whole steps run ~30-40x "
            "slower than fp32 (measured on a 2-core AVX2 CPU). Use train.dtype = 'auto' or 'fp32'.")


def resolve_precision(dtype: str, device: torch.device) -> Precision:
    """Resolve `train.dtype` for `device`.

    Args:
        dtype: "auto" (bf16 where native, else fp32), "bf16" or "fp32".
        device: the model's device.

    Returns:
        `Precision`; for an explicit "bf16" on a CPU without native bf16 it carries a `warning`.

    Raises:
        ValueError: `dtype` is none of the three.
    """
    if dtype not in ("auto", "bf16", "fp32"):
        raise ValueError(f"train.dtype must be 'auto', 'bf16' or 'fp32', got {dtype!r}")
    if dtype == "fp32":
        return Precision("fp32", None, "train.dtype = 'fp32'")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", torch.bfloat16, f"train.dtype = '{dtype}': bf16 autocast on "
                             f"{torch.cuda.get_device_name(device)}, fp32 master weights")
        if dtype == "auto":
            return Precision("fp32", None, "train.dtype = 'auto': this GPU has no bf16 support")
        return Precision("bf16", torch.bfloat16, "train.dtype = 'bf16'",
                         warning="train.dtype = 'bf16': this GPU reports no bf16 support; expect errors "
                                 "or slow steps. Use train.dtype = 'auto' or 'fp32'.")
    if device.type != "cpu":
        if dtype == "auto":
            return Precision("fp32", None, f"train.dtype = 'auto': fp32 on device type {device.type!r}")
        return Precision("bf16", torch.bfloat16, f"train.dtype = 'bf16' on {device.type}")
    info = cpu_bf16_support()
    if info.native:
        return Precision("bf16", torch.bfloat16, f"train.dtype = '{dtype}': bf16 autocast, native on this "
                         f"CPU ({info.isa}), fp32 master weights")
    if dtype == "auto":
        return Precision("fp32", None, "train.dtype = 'auto': fp32, because this CPU has no native bf16 "
                         f"({_why_not_native(info)})")
    return Precision("bf16", torch.bfloat16, "train.dtype = 'bf16' (emulated on this CPU)",
                     warning=_emulated_warning(info))
