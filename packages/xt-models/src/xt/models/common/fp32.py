"""Float32 regions with autocast off, for the routers and the router auxiliary losses.

Under ``train.dtype = "bf16"`` the forward runs in ``torch.autocast(dtype=torch.bfloat16)``, which
recasts ``F.linear``/``matmul`` on float32 inputs to bf16. A router computed there rounds its
logits to bf16 and changes the top-k expert set of a few percent of tokens. Routers and aux losses
therefore run inside :func:`fp32_region` on inputs cast with ``.float()``; autocast being off,
every op in the region runs in float32 exactly as without autocast (``xt.kernels._autocast`` is
the converse: it applies autocast's cast to the kernels' custom ops).
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["fp32_region"]

# Device types autocast knows (torch.autocast raises on others, e.g. "meta"); computed once at
# import so that the check is a constant lookup under torch.compile.
_AUTOCAST_DEVICE_TYPES = frozenset(t for t in ("cpu", "cuda", "xpu", "mps", "hpu", "mtia", "xla", "privateuseone")
                                   if torch.amp.is_autocast_available(t))


def fp32_region(device: torch.Tensor | torch.device | str) -> contextlib.AbstractContextManager:
    """A context manager that turns autocast off for ``device``'s type (a no-op for device types
    autocast does not support, e.g. ``"meta"``).

    Args:
        device: a tensor (its ``device`` is used), a ``torch.device`` or a device string.

    Returns:
        ``torch.autocast(device_type, enabled=False)`` or ``contextlib.nullcontext()``. The caller
        casts its inputs with ``.float()`` inside it (inputs that reach it in bf16 stay bf16 otherwise).

    Raises:
        RuntimeError: (from ``torch.device``) an unparsable device string.
    """
    if isinstance(device, torch.Tensor):
        device_type = device.device.type
    else:
        device_type = torch.device(device).type
    if device_type in _AUTOCAST_DEVICE_TYPES:
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()
