"""Activation checkpointing of a configurable share of layers (recompute in backward).

A checkpointed layer keeps only its inputs during forward and recomputes its activations when its
backward runs (``torch.utils.checkpoint``, non-reentrant). The layer object itself is kept (its
``forward`` is wrapped), so parameter names and state-dict keys do not change and FSDP2 can be
applied afterwards. Reference: Chen et al., "Training Deep Nets with Sublinear Memory Cost" (2016).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpointed_layer_ids", "apply_activation_checkpointing", "AC_ATTR"]

AC_ATTR = "xt_activation_checkpointing"


def checkpointed_layer_ids(num_layers: int, share: float = 0.0, every_n: int = 0) -> list[int]:
    """Which layers to checkpoint.

    Args:
        num_layers: L.
        share: fraction in [0, 1]; ``floor(L * share)`` layers, spread evenly (the last layer of
            each equal stretch: share 0.5 of 4 layers -> [1, 3]).
        every_n: if > 0, layers ``n-1, 2n-1, ...`` instead.

    Raises:
        ValueError: share outside [0, 1] or every_n < 0.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"activation checkpointing share must lie in [0, 1], got {share}")
    if every_n < 0:
        raise ValueError(f"activation_checkpointing_every_n must be >= 0, got {every_n}")
    if every_n:
        return [i for i in range(num_layers) if (i + 1) % every_n == 0]
    return [i for i in range(num_layers) if math.floor((i + 1) * share + 1e-9) > math.floor(i * share + 1e-9)]


def _checkpointed_forward(orig, *args, **kwargs):
    return checkpoint(orig, *args, use_reentrant=False, **kwargs)


def apply_activation_checkpointing(layers: Sequence[nn.Module], share: float = 1.0, every_n: int = 0) -> list[int]:
    """Wrap the ``forward`` of the chosen layers (see :func:`checkpointed_layer_ids`) in place.

    Applying it twice to a layer is a no-op for that layer.

    Returns:
        The indices of the checkpointed layers.
    """
    ids = checkpointed_layer_ids(len(layers), share, every_n)
    for i in ids:
        layer = layers[i]
        if getattr(layer, AC_ATTR, False):
            continue
        layer.forward = functools.partial(_checkpointed_forward, layer.forward)
        setattr(layer, AC_ATTR, True)
    return ids
