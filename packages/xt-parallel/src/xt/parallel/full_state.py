"""The full (unsharded) state of a laid-out model, one tensor at a time (streamed export, weight sync).

:class:`FullState` walks a model's parameters (FSDP2 shards, EP expert slices) and persistent buffers
and gathers them one by one, so a rank holds one full tensor at a time (plus what its consumer
keeps), never the full model. Its ``layout`` (names, global shapes, dtypes, in iteration order) is
known before anything is gathered, which lets a writer plan files and buckets up front
(``xt.models.save_pretrained(..., tensors=FullState(...))``, ``xt.models.iter_hf_buckets``).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from xt.parallel.fsdp import EP_ATTR
from xt.parallel.gather import full_tensor
from xt.parallel.names import persistent_buffer_names, plain_name

__all__ = ["FullState"]


class FullState:
    """Iterable of ``(name, full tensor)`` over a (laid-out) model, keyed as the plain model's
    ``state_dict()``: parameters gathered over FSDP2 and, for modules marked by
    :func:`xt.parallel.fsdp.shard_experts_`, over `ep_group`; a tied parameter gathered once and
    yielded under each of its names in a row; then the persistent buffers. Tensors are on `device`
    (default the CPU; the model's own device, e.g. ``cuda``, skips the round trip through the host
    for a consumer on that device, such as a colocated rollout copy).

    Collective: every rank must iterate it to the end, in step (each tensor is an all-gather); each
    rank gets every tensor. Iterating again gathers again.

    Attributes:
        layout: ``[(name, global shape, dtype)]`` in iteration order (nothing gathered).
    """

    def __init__(self, model: nn.Module, ep_group: dist.ProcessGroup | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        names: dict[int, list[str]] = defaultdict(list)
        for name, p in model.named_parameters(remove_duplicate=False):
            names[id(p)].append(plain_name(name))
        self._entries: list[tuple[list[str], torch.Tensor, dist.ProcessGroup | None]] = []
        seen: set[int] = set()
        for _, module in model.named_modules():
            group = ep_group if hasattr(module, EP_ATTR) else None
            for _, p in module.named_parameters(recurse=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    self._entries.append((names[id(p)], p, group))
        persistent = persistent_buffer_names(model)
        self._entries += [([plain_name(n)], b, None) for n, b in model.named_buffers() if n in persistent]
        self.layout = [(n, self._global_shape(t, g), t.dtype) for ns, t, g in self._entries for n in ns]

    @staticmethod
    def _global_shape(t: torch.Tensor, group) -> tuple[int, ...]:
        if isinstance(t, DTensor) or group is None or dist.get_world_size(group) == 1:
            return tuple(t.shape)
        return (t.shape[0] * dist.get_world_size(group), *t.shape[1:])

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        with torch.no_grad():
            for names, t, group in self._entries:
                full = full_tensor(t, group).to(self.device)
                for name in names:
                    yield name, full
                del full
