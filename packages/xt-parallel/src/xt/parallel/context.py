"""`ParallelDistContext`: the real :class:`xt.core.distributed.DistContext` for an xt.parallel layout."""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule

from xt.parallel.clip import clip_grad_norm_
from xt.parallel.mesh import ParallelMeshes
from xt.parallel.sp_batch import shard_batch_for_sp

__all__ = ["ParallelDistContext"]


class ParallelDistContext:
    """Collectives and layout facts the engine and the CLI need (implements ``xt.core.distributed.DistContext``).

    Every rank holds distinct label tokens (SP ranks hold distinct slices), so ``world_size`` is the
    full world and ``all_reduce_sum`` reduces over it; gradients are summed over it by FSDP.

    Attributes:
        meshes: the layout's meshes. rank / world_size / is_main: global.
        dp_rank / dp_size: shard the data loader with these (SP ranks of one group read the same data).
        sp_rank / sp_size: this rank's slice of each packed batch (:meth:`shard_batch`).
        image_token_id: the model's ``xt_image_token_id`` (vision-language models), or None.
    """

    def __init__(self, meshes: ParallelMeshes, image_token_id: int | None = None) -> None:
        self.meshes = meshes
        self.rank = meshes.rank
        self.world_size = meshes.world_size
        self.is_main = meshes.rank == 0
        self.dp_rank, self.dp_size = meshes.dp_rank, meshes.dp_size
        self.sp_rank, self.sp_size = meshes.sp_rank, meshes.cfg.sp_size
        self.ep_size = meshes.cfg.ep_size
        self.image_token_id = image_token_id

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum `t` over all ranks in place and return it."""
        dist.all_reduce(t)
        return t

    def clip_grad_norm_(self, params: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
        """Clip to `max_norm` with the true global L2 norm over dense and expert meshes (:mod:`xt.parallel.clip`)."""
        return clip_grad_norm_(params, max_norm)

    def set_grad_sync(self, model: nn.Module, enabled: bool) -> None:
        """FSDP2 ``set_requires_gradient_sync`` on every FSDP unit (off during gradient accumulation)."""
        for m in model.modules():
            if isinstance(m, FSDPModule):
                m.set_requires_gradient_sync(enabled, recurse=False)

    def barrier(self) -> None:
        """``dist.barrier()`` over all ranks."""
        dist.barrier()

    def shard_batch(self, batch: dict, pad_token_id: int = 0) -> dict:
        """This rank's SP slice of a packed micro-batch (identity when ``sp_size == 1``); a
        vision-language batch keeps its tiles whole and numbers its image tokens globally
        (:func:`xt.parallel.sp_batch.shard_batch_for_sp`)."""
        if self.sp_size == 1:
            return batch
        return shard_batch_for_sp(batch, self.sp_rank, self.sp_size, pad_token_id, self.image_token_id)
