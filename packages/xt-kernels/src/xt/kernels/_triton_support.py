"""Lazy Triton support shared by the kernels: availability, interpreter mode, SM count, allocator.

Triton is an optional extra (``xt-kernels[triton]``): nothing here imports it at module load.
Triton kernels run on CUDA devices, and on CPU tensors only when the Triton interpreter is active
(environment variable ``TRITON_INTERPRET=1`` set before Triton is first imported).
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

__all__ = ["triton_importable", "interpreter_active", "triton_usable_on", "num_sms", "ensure_allocator"]


@functools.cache
def triton_importable() -> bool:
    """Whether the ``triton`` package can be imported (without importing it)."""
    return importlib.util.find_spec("triton") is not None


def interpreter_active() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_usable_on(device: torch.device) -> bool:
    """Whether a Triton kernel can run on tensors of ``device``: CUDA with Triton installed, or
    CPU under the Triton interpreter."""
    if not triton_importable():
        return False
    if device.type == "cuda":
        return not interpreter_active()
    return device.type == "cpu" and interpreter_active()


@functools.cache
def num_sms(device_index: int | None) -> int:
    """Streaming multiprocessor count of a CUDA device (4 in the CPU interpreter, so that the
    persistent tile loops are exercised with several programs)."""
    if device_index is None:
        return 4
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def ensure_allocator(device: torch.device) -> None:
    """Install Triton's scratch allocator (needed by device-side tensor descriptors) for ``device``.

    ``triton.set_allocator`` sets a process-wide (context-variable) hook; we point it at the
    PyTorch caching allocator of the device the kernel runs on.
    """
    import triton

    def alloc(size: int, alignment: int, stream):  # noqa: ARG001 - Triton's signature
        return torch.empty(size, dtype=torch.int8, device=device)

    triton.set_allocator(alloc)
