"""Model and decoder-layer output objects, the decoder loop and the packed-batch input helpers
shared by all causal LMs."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from xt.models.common.router import RouterStats

__all__ = ["CausalLMOutput", "LayerOutput", "run_layers", "PackedInput", "pack_inputs", "check_cu_seqlens"]


@dataclass
class CausalLMOutput:
    """Forward result (contract in ``docs/contracts.md``).

    Attributes:
        loss_sum: float32 scalar, **sum** of token cross-entropy over labels != -100 (None
            without labels).
        aux_loss: float32 scalar with the coefficients applied (load balancing + z-loss), or None
            for dense models.
        metrics: extra tensors to log, e.g. ``expert_load [L_moe, E]`` (fraction of routed slots).
        logits: ``[T, V]`` for packed input, ``[B, S, V]`` for batched input; None when not requested.
        hidden: ``[T, D]`` final-normed hidden states of the packed tokens (``return_hidden=True``;
            the model then leaves the head projection and its loss to the caller: ``loss_sum``
            None), else None.
        head_weight: ``[V, D]`` the LM-head weight as this forward used it (with ``hidden``), so
            that a loss object (`xt.models.common.head_loss`) applies the head and its reduction
            through the fused kernels; gradients reach the model's head through it.
    """
    loss_sum: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    head_weight: torch.Tensor | None = None


@dataclass
class PackedInput:
    """A batch in packed form.

    Attributes:
        input_ids: ``[T]`` int64.
        position_ids: ``[T]`` int64.
        cu_seqlens: ``[D+1]`` int32.
        max_seqlen: longest document.
        labels: ``[T]`` int64 or None.
        batch_shape: ``(B, S)`` for batched input (to unpack logits), None for packed input.
        token_index: ``[T]`` int64 flat index into ``B*S`` of every kept token (batched input
            with an ``attention_mask``), else None.
    """
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    labels: torch.Tensor | None
    batch_shape: tuple[int, int] | None = None
    token_index: torch.Tensor | None = None

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token ``x[T, ...]`` back to the caller's layout (``[B, S, ...]`` zero-filled at padding)."""
        if self.batch_shape is None:
            return x
        B, S = self.batch_shape
        if self.token_index is None:
            return x.view(B, S, *x.shape[1:])
        full = x.new_zeros(B * S, *x.shape[1:])
        full[self.token_index] = x
        return full.view(B, S, *x.shape[1:])


@dataclass
class LayerOutput:
    """What every family's decoder layer returns (Qwen3, Llama, GPT-OSS, DeepSeek-V3 and its MTP
    depths' decoder block).

    Attributes:
        hidden: ``[T, D]`` the layer's output hidden states (the input's dtype).
        router_stats: the MoE router's `xt.models.common.router.RouterStats` (float32 sums over
            the layer's T tokens); None for a dense layer.
        seq_aux: float32 scalar, DeepSeek-V3's sequence-wise balance loss before its coefficient
            (only when the model asks for it); None otherwise.
    """
    hidden: torch.Tensor
    router_stats: RouterStats | None = None
    seq_aux: torch.Tensor | None = None


# Pytree nodes, so FSDP2 hooks, activation checkpointing and torch.compile see the tensors inside.
torch.export.register_dataclass(CausalLMOutput)
torch.export.register_dataclass(LayerOutput)


def run_layers(layers: Iterable[torch.nn.Module], h: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, list[RouterStats], list[torch.Tensor]]:
    """The decoder loop every family's model body runs: ``h = layer(h, *args, **kwargs).hidden``.

    Each layer is called as a module (so activation checkpointing and FSDP2 hooks on it apply)
    and returns a :class:`LayerOutput`.

    Args:
        layers: the decoder layers in order (``model.layers``).
        h: ``[T, D]`` the embedded tokens.
        *args, **kwargs: passed to every layer after ``h`` (rope ``cos, sin``, ``cu_seqlens``,
            ``max_seqlen``, and any family extras).

    Returns:
        ``(h [T, D] after the last layer (before the final norm), router stats of the MoE layers
        in order, sequence-wise aux losses of the layers that give one)``.
    """
    stats: list[RouterStats] = []
    seq: list[torch.Tensor] = []
    for layer in layers:
        out = layer(h, *args, **kwargs)
        h = out.hidden
        if out.router_stats is not None:
            stats.append(out.router_stats)
        if out.seq_aux is not None:
            seq.append(out.seq_aux)
    return h, stats, seq


def _positions_from_cu(cu: torch.Tensor, total: int) -> torch.Tensor:
    idx = torch.arange(total, device=cu.device)
    doc = torch.bucketize(idx, cu[1:].to(torch.int64), right=True)
    return idx - cu.to(torch.int64)[doc]


def check_cu_seqlens(bounds: list[int], T: int, sp_shard_ok: bool = False) -> None:
    """Check packed document boundaries ``bounds`` (``cu_seqlens`` as a list) for ``T`` tokens.

    They must start at 0, never fall, and end at T; a sequence-parallel shard (``sp_shard_ok``: it
    brings its own ``position_ids``) holds T of the n*T tokens that the *global* boundaries
    describe, so they may end at a multiple of T.

    Raises:
        ValueError: boundaries that break this, naming ``cu_seqlens`` and T.
    """
    sp_shard = sp_shard_ok and T > 0 and bounds[-1] > T and bounds[-1] % T == 0
    if (bounds[0] != 0 or (bounds[-1] != T and not sp_shard)
            or any(b > a for a, b in zip(bounds[1:], bounds[:-1]))):
        raise ValueError(f"cu_seqlens must rise from 0 to T={T}; got {bounds[:8]}{'...' if len(bounds) > 8 else ''}")


def pack_inputs(input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                max_seqlen: int | None = None, attention_mask: torch.Tensor | None = None) -> PackedInput:
    """Normalise a model's inputs to packed form.

    Packed: ``input_ids[T]`` (+ ``labels[T]``, ``position_ids[T]``, ``cu_seqlens[D+1]``); without
    ``cu_seqlens`` the whole row is one document; without ``position_ids`` they restart at 0 per
    document. A sequence-parallel shard may pass the global ``cu_seqlens`` (ending at a multiple
    of T) together with its ``position_ids``. Batched: ``input_ids[B, S]`` is B documents of S tokens; an ``attention_mask[B, S]``
    (1 = real token) drops padding tokens before packing (positions count real tokens only).

    Raises:
        ValueError: a shape, dtype or ``cu_seqlens`` that breaks the contract (the message names
            the field).
    """
    if input_ids.dim() == 2:
        if cu_seqlens is not None:
            raise ValueError("cu_seqlens is only for packed 1-D input_ids; got input_ids of shape "
                             f"{tuple(input_ids.shape)}")
        B, S = input_ids.shape
        for name, t in (("labels", labels), ("position_ids", position_ids), ("attention_mask", attention_mask)):
            if t is not None and tuple(t.shape) != (B, S):
                raise ValueError(f"{name} must have the shape of input_ids {(B, S)}; got {tuple(t.shape)}")
        dev = input_ids.device
        if attention_mask is None:
            lengths = torch.full((B,), S, dtype=torch.int64, device=dev)
            keep = None
        else:
            m = attention_mask.bool()
            lengths = m.sum(1)
            keep = m.reshape(-1).nonzero().squeeze(1)
            if position_ids is None:
                position_ids = (m.cumsum(1) - 1).clamp(min=0)
        cu = torch.zeros(B + 1, dtype=torch.int32, device=dev)
        cu[1:] = lengths.cumsum(0)
        if position_ids is None:
            position_ids = torch.arange(S, device=dev).expand(B, S)
        sel = (lambda t: t.reshape(-1)) if keep is None else (lambda t: t.reshape(-1)[keep])
        return PackedInput(sel(input_ids), sel(position_ids), cu, int(lengths.max()) if B else 0,
                           None if labels is None else sel(labels), (B, S), keep)
    if input_ids.dim() != 1:
        raise ValueError(f"input_ids must be [T] (packed) or [B, S] (batched); got {tuple(input_ids.shape)}")
    if attention_mask is not None:
        raise ValueError("attention_mask is only for batched [B, S] input; packed input has no padding")
    T = input_ids.shape[0]
    if cu_seqlens is None:
        cu_seqlens = torch.tensor([0, T], dtype=torch.int32, device=input_ids.device)
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.is_floating_point():
        raise ValueError(f"cu_seqlens must be a 1-D integer tensor [D+1]; got {tuple(cu_seqlens.shape)} {cu_seqlens.dtype}")
    # Reading device-resident boundaries back would stall the host once per forward: with
    # max_seqlen given they are checked where they were made instead (on the host: xt.data's
    # packer, and the engine's to_device for every micro-batch).
    bounds = None if (cu_seqlens.device.type != "cpu" and max_seqlen is not None) else cu_seqlens.tolist()
    if bounds is not None:
        check_cu_seqlens(bounds, T, position_ids is not None)
    cu_seqlens = cu_seqlens.to(torch.int32)
    for name, t in (("labels", labels), ("position_ids", position_ids)):
        if t is not None and tuple(t.shape) != (T,):
            raise ValueError(f"{name} must be [T]=[{T}] like input_ids; got {tuple(t.shape)}")
    if position_ids is None:
        position_ids = _positions_from_cu(cu_seqlens, T)
    if max_seqlen is None:
        max_seqlen = max(b - a for a, b in zip(bounds[:-1], bounds[1:]))
    return PackedInput(input_ids, position_ids, cu_seqlens, int(max_seqlen), labels)
