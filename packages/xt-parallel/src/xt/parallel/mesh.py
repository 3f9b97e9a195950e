"""Named device meshes for FSDP2/HSDP, expert parallelism (EP) and Ulysses sequence parallelism (SP).

Three views of the same ``world_size`` ranks (rank ``r`` is ``arange(world_size)`` reshaped):

* ``dense``  ``("dp_replicate", "dp_shard")`` = ``(hsdp_replicate, fsdp_size)``: FSDP mesh of all
  non-expert parameters (HSDP when ``hsdp_replicate > 1``).
* ``expert`` ``("dp_replicate", "edp_shard", "ep")`` = ``(hsdp_replicate, fsdp_size // ep_size,
  ep_size)``: experts are sliced over ``ep`` (consecutive ranks inside one FSDP shard group, as in
  XTuner V1: EP needs no extra devices) and FSDP-sharded over the remaining ``edp_shard`` ranks.
* ``data``   ``("dp", "sp")`` = ``(world_size // sp_size, sp_size)``: ranks of one ``sp`` row hold
  slices of the same packed sequence; ``dp`` indexes the distinct data streams (loader shards).

SP and EP ranks also shard parameters under FSDP: gradients are *summed* over all ranks (the loss is a
sum over the ranks' tokens divided by the global token count), see :mod:`xt.parallel.fsdp`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from xt.core.errors import XTError
from xt.parallel.config import ParallelConfig

__all__ = ["LayoutError", "validate_layout", "ParallelMeshes", "build_meshes"]


class LayoutError(XTError, ValueError):
    """A parallel layout that cannot work for this world size or model; the message says why and
    lists values that would be valid."""


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def validate_layout(cfg: ParallelConfig, world_size: int, *, num_experts: int | None = None,
                    num_attention_heads: int | None = None, num_key_value_heads: int | None = None,
                    mtp_layers: int = 0) -> int:
    """Check a layout before any work; return the resolved ``fsdp_size``.

    Args:
        cfg: the `parallel` section.
        world_size: number of ranks (``torchrun --nproc-per-node`` × nodes).
        num_experts: experts per MoE layer (None or 0: dense model, EP must be 1).
        num_attention_heads / num_key_value_heads: attention heads (None: SP must be 1).
        mtp_layers: multi-token-prediction modules (DeepSeek-V3); they read the next token, which
            lies on another rank at an SP slice boundary, so they exclude ``sp_size > 1``.

    Raises:
        LayoutError: world size not ``hsdp_replicate × fsdp_size``; ``ep_size`` not dividing
            ``fsdp_size`` or ``num_experts``; ``sp_size`` not dividing the world size or
            ``num_attention_heads``; ``num_key_value_heads`` neither a multiple nor a divisor of
            ``sp_size``; multi-token prediction with ``sp_size > 1``. The message names the field and
            the valid choices.
    """
    if world_size < 1:
        raise LayoutError(f"world_size must be >= 1, got {world_size}")
    fsdp = cfg.resolved_fsdp_size(world_size)
    if cfg.hsdp_replicate * fsdp != world_size:
        valid = [(r, world_size // r) for r in _divisors(world_size)]
        raise LayoutError(
            f"parallel.hsdp_replicate ({cfg.hsdp_replicate}) × parallel.fsdp_size ({fsdp}) = "
            f"{cfg.hsdp_replicate * fsdp} but the world size is {world_size}; valid (hsdp_replicate, fsdp_size): {valid}")
    if fsdp % cfg.ep_size:
        raise LayoutError(
            f"parallel.ep_size ({cfg.ep_size}) must divide parallel.fsdp_size ({fsdp}): expert parallelism is laid "
            f"inside the FSDP shard group; valid ep_size: {_divisors(fsdp)}")
    if cfg.ep_size > 1 or cfg.capacity_factor is not None:
        if not num_experts:
            raise LayoutError(f"parallel.ep_size ({cfg.ep_size}) > 1 or parallel.capacity_factor set, but the model has no "
                              f"MoE layers (num_experts={num_experts}); use ep_size = 1 and no capacity_factor")
        if num_experts % cfg.ep_size:
            ok = [d for d in _divisors(fsdp) if num_experts % d == 0]
            raise LayoutError(f"num_experts ({num_experts}) is not divisible by parallel.ep_size ({cfg.ep_size}); "
                              f"valid ep_size for fsdp_size {fsdp}: {ok}")
    if world_size % cfg.sp_size:
        raise LayoutError(f"parallel.sp_size ({cfg.sp_size}) must divide the world size ({world_size}); "
                          f"valid sp_size: {_divisors(world_size)}")
    if cfg.sp_size > 1:
        if num_attention_heads is None:
            raise LayoutError("parallel.sp_size > 1 needs the model's num_attention_heads")
        if num_attention_heads % cfg.sp_size:
            ok = [d for d in _divisors(world_size) if num_attention_heads % d == 0]
            raise LayoutError(f"num_attention_heads ({num_attention_heads}) is not divisible by parallel.sp_size "
                              f"({cfg.sp_size}): Ulysses gives each SP rank whole heads; valid sp_size: {ok}")
        if mtp_layers:
            raise LayoutError(f"parallel.sp_size ({cfg.sp_size}) > 1 is not supported with multi-token prediction "
                              f"(mtp_layers={mtp_layers}): it needs the next token across SP slices; use sp_size = 1 "
                              "or mtp_layers = 0")
        hkv = num_key_value_heads or num_attention_heads
        if hkv % cfg.sp_size and cfg.sp_size % hkv:
            raise LayoutError(f"num_key_value_heads ({hkv}) must be a multiple of parallel.sp_size ({cfg.sp_size}) or "
                              f"divide it (then KV heads are replicated); valid sp_size: "
                              f"{[d for d in _divisors(world_size) if num_attention_heads % d == 0 and (hkv % d == 0 or d % hkv == 0)]}")
    return fsdp


@dataclass
class ParallelMeshes:
    """The meshes of one layout plus this rank's coordinates (all fields read-only by convention).

    Attributes:
        cfg: the layout. world_size / rank: global.
        dense: FSDP mesh of non-expert parameters, ``("dp_replicate", "dp_shard")``.
        expert: ``("dp_replicate", "edp_shard", "ep")``.
        data: ``("dp", "sp")``.
    """

    cfg: ParallelConfig
    world_size: int
    rank: int
    fsdp_size: int
    dense: DeviceMesh
    expert: DeviceMesh
    data: DeviceMesh

    @property
    def dense_fsdp_mesh(self) -> DeviceMesh:
        """Mesh for `fully_shard` of dense parameters: 1-D ``dp_shard`` or 2-D HSDP."""
        return self.dense["dp_shard"] if self.cfg.hsdp_replicate == 1 else self.dense

    @property
    def expert_fsdp_mesh(self) -> DeviceMesh:
        """Mesh for `fully_shard` of this rank's expert slice: ``edp_shard`` (with ``dp_replicate`` for HSDP)."""
        if self.cfg.hsdp_replicate == 1:
            return self.expert["edp_shard"]
        return self.expert["dp_replicate", "edp_shard"]

    @property
    def ep_group(self) -> dist.ProcessGroup:
        """Process group of this rank's ``ep`` row (the ranks that exchange tokens in MoE layers)."""
        return self.expert.get_group("ep")

    @property
    def ep_rank(self) -> int:
        """Index in the EP group: this rank owns experts ``[ep_rank * El, (ep_rank + 1) * El)``."""
        return self.expert.get_local_rank("ep")

    @property
    def sp_group(self) -> dist.ProcessGroup:
        """Process group of this rank's ``sp`` row (the ranks sharing one packed sequence)."""
        return self.data.get_group("sp")

    @property
    def sp_rank(self) -> int:
        """Index in the SP group: which slice of each packed sequence this rank holds."""
        return self.data.get_local_rank("sp")

    @property
    def dp_rank(self) -> int:
        """Index of this rank's data stream: shard the loader with (dp_rank, dp_size)."""
        return self.data.get_local_rank("dp")

    @property
    def dp_size(self) -> int:
        """Number of distinct data streams, ``world_size // sp_size``."""
        return self.world_size // self.cfg.sp_size


def build_meshes(cfg: ParallelConfig, device_type: str, **model_sizes: int | None) -> ParallelMeshes:
    """Validate the layout against the initialised default process group and build its meshes.

    Collective: every rank must call it, in the same order relative to other group creations.

    Args:
        cfg: the layout.
        device_type: ``"cuda"`` (NCCL) or ``"cpu"`` (gloo).
        **model_sizes: ``num_experts``, ``num_attention_heads``, ``num_key_value_heads``, ``mtp_layers`` passed to
            :func:`validate_layout`.

    Raises:
        RuntimeError: the default process group is not initialised (run under torchrun).
        LayoutError: see :func:`validate_layout`.
    """
    if not dist.is_initialized():
        raise RuntimeError("build_meshes needs torch.distributed initialised (launch with torchrun)")
    world, rank = dist.get_world_size(), dist.get_rank()
    fsdp = validate_layout(cfg, world, **model_sizes)
    ranks = torch.arange(world)
    r = cfg.hsdp_replicate
    dense = DeviceMesh(device_type, ranks.view(r, fsdp), mesh_dim_names=("dp_replicate", "dp_shard"))
    expert = DeviceMesh(device_type, ranks.view(r, fsdp // cfg.ep_size, cfg.ep_size),
                        mesh_dim_names=("dp_replicate", "edp_shard", "ep"))
    data = DeviceMesh(device_type, ranks.view(world // cfg.sp_size, cfg.sp_size), mesh_dim_names=("dp", "sp"))
    return ParallelMeshes(cfg=cfg, world_size=world, rank=rank, fsdp_size=fsdp, dense=dense, expert=expert, data=data)
