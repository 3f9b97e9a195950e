"""`ParallelConfig`: the `parallel` section of an XT config (FSDP2 / HSDP, EP, Ulysses SP, AC).

Rank layout (see :mod:`xt.parallel.mesh` for the meshes built from it)::

    world_size = hsdp_replicate * fsdp_size          # dense (non-expert) parameters
    fsdp_size  = edp_shard * ep_size                  # experts: E sliced over ep, FSDP over edp
    world_size = dp_size * sp_size                    # data: dp streams, each split over sp ranks

Expert parallelism lives inside the FSDP ranks (as in XTuner V1): it needs no extra devices.
Sequence-parallel ranks also take part in FSDP sharding (they hold the same parameters).
"""
from __future__ import annotations

import math
from typing import Literal

from xt.core.config.base import ConfigStruct, require
from xt.core.config.dtypes import DTYPES, normalize_dtype_field

__all__ = ["ParallelConfig", "DTYPE_NAMES"]

#: the dtype names `param_dtype` / `reduce_dtype` keep (None keeps the parameters' dtype); torch's
#: spellings ``"bfloat16"``, ``"float16"``, ``"float32"`` are accepted too (`xt.core.config.dtypes`).
DTYPE_NAMES = DTYPES

#: what a TOML file may write for them: XT's spelling or torch's
_DtypeName = Literal["bf16", "fp16", "fp32", "bfloat16", "float16", "float32"]


class ParallelConfig(ConfigStruct):
    """How the model is spread over `world_size` ranks (all sizes are numbers of ranks).

    Attributes:
        fsdp_size: ranks that shard each dense parameter; None = ``world_size // hsdp_replicate``.
        hsdp_replicate: HSDP replica groups (1 = plain FSDP); ``hsdp_replicate * fsdp_size`` must
            equal the world size.
        ep_size: expert-parallel ranks; experts are sliced over them (``num_experts % ep_size == 0``),
            must divide `fsdp_size`.
        sp_size: Ulysses sequence-parallel ranks; must divide the world size and
            ``num_attention_heads``.
        activation_checkpointing: share of decoder layers recomputed in backward, in [0, 1]
            (0 = off, 1 = every layer); the checkpointed layers are spread evenly.
        activation_checkpointing_every_n: alternative to the share: checkpoint layers
            ``n-1, 2n-1, ...`` (0 = use the share).
        cpu_offload: keep sharded parameters, gradients and optimizer state in host memory
            (FSDP2 `CPUOffloadPolicy`).
        reshard_after_forward: free gathered parameters after each layer's forward (ZeRO-3);
            False keeps them until backward (ZeRO-2-like, more memory, fewer all-gathers).
        param_dtype: compute dtype of gathered parameters (`MixedPrecisionPolicy.param_dtype`),
            ``"bf16"``, ``"fp16"`` or ``"fp32"`` (torch's ``"bfloat16"``, ``"float16"``,
            ``"float32"`` are accepted and stored short); unset keeps the stored dtype, so a run under
            torchrun computes like the single-process run (the engine's ``train.dtype = "bf16"``
            autocast applies to both). ``"bf16"`` = fp32 master weights sharded, bf16 gathered copies.
        reduce_dtype: dtype of the gradient reduce-scatter / all-reduce (default ``"fp32"``; the
            same spellings), or unset (= param_dtype).
        capacity_factor: None = dropless expert parallelism. A number > 0 caps every expert at
            ``ceil(capacity_factor * T * K / num_experts)`` rows per source rank; excess rows are
            dropped (contribute zero) with a warning and a counted metric.
        moe_token_chunks: run the routed part of every MoE block (dispatch -> experts -> combine)
            over the micro-batch's tokens in this many chunks, each recomputed in backward, so one
            chunk's expert activations are alive at a time (long micro-batches; costs one more
            forward of the routed part). 1 = off. `xt.parallel.moe_chunks`.
        ep_overlap: split every MoE layer's tokens in two chunks and overlap each chunk's EP
            all-to-all with the other's expert compute, forward and backward
            (`xt.parallel.ep_overlap`). Needs ``ep_size > 1`` and no `capacity_factor`. Off by
            default until measured on GPUs.
        grad_clip_norm: not here (the trainer's optimizer section owns it); see
            :func:`xt.parallel.clip.clip_grad_norm_`.
    """

    fsdp_size: int | None = None
    hsdp_replicate: int = 1
    ep_size: int = 1
    sp_size: int = 1
    activation_checkpointing: float = 0.0
    activation_checkpointing_every_n: int = 0
    cpu_offload: bool = False
    reshard_after_forward: bool = True
    param_dtype: _DtypeName | None = None
    reduce_dtype: _DtypeName | None = "fp32"
    capacity_factor: float | None = None
    moe_token_chunks: int = 1
    ep_overlap: bool = False

    def __post_init__(self) -> None:
        """Range checks that need no world size (the layout is checked by `validate_layout`)."""
        require(self.fsdp_size is None or self.fsdp_size >= 1, "fsdp_size", f"must be >= 1 or unset, got {self.fsdp_size}")
        for name in ("hsdp_replicate", "ep_size", "sp_size"):
            value = getattr(self, name)
            require(value >= 1, name, f"must be >= 1, got {value}")
        require(0.0 <= self.activation_checkpointing <= 1.0, "activation_checkpointing",
                f"is a share of layers and must lie in [0, 1], got {self.activation_checkpointing}")
        require(self.activation_checkpointing_every_n >= 0, "activation_checkpointing_every_n",
                f"must be >= 0 (0 = off), got {self.activation_checkpointing_every_n}")
        require(not (self.activation_checkpointing_every_n and self.activation_checkpointing),
                "activation_checkpointing_every_n",
                "and `activation_checkpointing` (share) are exclusive: set only one of them")
        require(self.moe_token_chunks >= 1, "moe_token_chunks", f"must be >= 1 (1 = off), got {self.moe_token_chunks}")
        require(not self.ep_overlap or self.ep_size > 1, "ep_overlap",
                f"overlaps the expert-parallel all-to-all and needs ep_size > 1, got ep_size = {self.ep_size}")
        require(not (self.ep_overlap and self.capacity_factor is not None), "ep_overlap",
                "does not support capacity_factor (a capacity is per source rank over the whole micro-batch); "
                "unset one of them")
        normalize_dtype_field(self, "param_dtype", DTYPE_NAMES)  # "bfloat16" -> "bf16"; also when built in Python
        normalize_dtype_field(self, "reduce_dtype", DTYPE_NAMES)
        if self.capacity_factor is not None:
            require(math.isfinite(self.capacity_factor) and self.capacity_factor > 0, "capacity_factor",
                    f"must be a finite number > 0 or unset (dropless), got {self.capacity_factor}")

    def resolved_fsdp_size(self, world_size: int) -> int:
        """`fsdp_size`, or ``world_size // hsdp_replicate`` when unset."""
        return self.fsdp_size if self.fsdp_size is not None else max(world_size // self.hsdp_replicate, 1)
