"""The label convention of the batch contract (docs/contracts.md, Batches).

``labels [T]`` int64 are pre-shifted (``labels[t]`` is the target of position ``t``) and hold
:data:`IGNORE_INDEX` where a position has no target: each document's last token, tokens without
loss (e.g. non-assistant turns), Ulysses padding. Every package that writes or reads such labels
(data packing, the engine's token count, the models' and kernels' cross-entropy, sequence
parallelism) uses this one constant; ``xt.core`` sits below all of them.
"""
from __future__ import annotations

__all__ = ["IGNORE_INDEX"]

#: label value that carries no loss (PyTorch's ``F.cross_entropy`` default ``ignore_index``)
IGNORE_INDEX = -100
