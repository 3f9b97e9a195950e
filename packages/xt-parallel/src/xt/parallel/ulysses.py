"""Ulysses sequence parallelism: all-to-all sequence<->heads around a core attention.

Shape legend: P = sp_size, Tl local tokens per SP rank, T = P*Tl tokens of the packed sequence,
Hq query heads, Hkv key/value heads, d head_dim.

Each SP rank holds ``q[Tl, Hq, d]`` of its slice of the packed sequence. One all-to-all turns it into
``[T, Hq/P, d]``: the whole sequence for ``Hq/P`` heads, so the unchanged core attention runs over
documents that span ranks (``cu_seqlens`` are the *global* ones). A second all-to-all returns
``[Tl, Hq, d]``. When ``Hkv < P`` (and ``P % Hkv == 0``) each KV head is repeated ``P/Hkv`` times
first, so every rank gets the one KV head its query heads use (GQA grouping is preserved).

Reference: Jacobs et al., "DeepSpeed Ulysses" (arXiv:2309.14509).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from xt.kernels import autocast_inputs
from xt.parallel.comm import all_to_all

__all__ = ["UlyssesAttention", "seq_to_heads", "heads_to_seq", "kv_repeat_for_sp", "PER_HEAD_KWARGS"]

#: keyword arguments of a core attention that hold one value per query head (dim 0 = Hq), e.g. the
#: learned attention sinks of GPT-OSS; Ulysses passes each rank its heads' slice.
PER_HEAD_KWARGS = ("sinks",)


def seq_to_heads(x: torch.Tensor, group: dist.ProcessGroup, sp_size: int) -> torch.Tensor:
    """``[Tl, H, d]`` (my tokens, all heads) -> ``[P*Tl, H/P, d]`` (all tokens in rank order, my heads).

    Raises:
        ValueError: ``H`` not divisible by ``sp_size``.
    """
    tl, h, d = x.shape
    if h % sp_size:
        raise ValueError(f"Ulysses: {h} heads cannot be split over sp_size={sp_size}")
    send = x.reshape(tl, sp_size, h // sp_size, d).transpose(0, 1).contiguous().view(sp_size * tl, h // sp_size, d)
    return all_to_all(send, None, None, group)


def heads_to_seq(x: torch.Tensor, group: dist.ProcessGroup, sp_size: int) -> torch.Tensor:
    """Inverse of :func:`seq_to_heads`: ``[P*Tl, H/P, d]`` -> ``[Tl, H, d]``."""
    t, hp, d = x.shape
    recv = all_to_all(x.contiguous(), None, None, group)
    tl = t // sp_size
    return recv.view(sp_size, tl, hp, d).transpose(0, 1).reshape(tl, sp_size * hp, d)


def kv_repeat_for_sp(num_attention_heads: int, num_key_value_heads: int, sp_size: int) -> int:
    """How many times each KV head is repeated so that every SP rank gets whole KV heads.

    Returns 1 when ``num_key_value_heads % sp_size == 0``, else ``sp_size // num_key_value_heads``.

    Raises:
        ValueError: ``num_attention_heads % sp_size != 0``, or ``num_key_value_heads`` neither a
            multiple nor a divisor of ``sp_size`` (no head split keeps the GQA grouping).
    """
    if num_attention_heads % sp_size:
        raise ValueError(f"Ulysses: num_attention_heads ({num_attention_heads}) must be divisible by sp_size ({sp_size})")
    if num_key_value_heads % sp_size == 0:
        return 1
    if sp_size % num_key_value_heads == 0:
        return sp_size // num_key_value_heads
    raise ValueError(f"Ulysses: num_key_value_heads ({num_key_value_heads}) must be a multiple or a divisor of "
                     f"sp_size ({sp_size})")


class UlyssesAttention(nn.Module):
    """Wrap a core attention ``inner(q[T,Hq,d], k[T,Hkv,d], v[T,Hkv,d], cu_seqlens, max_seqlen) -> [T,Hq,d]``.

    Args:
        inner: the single-device core attention (kept as a submodule when it is an ``nn.Module``,
            so its state-dict keys move under ``inner.``; it has no parameters in XT).
        sp_group: the ``sp`` process group (mesh ``data["sp"]``).

    Forward takes this rank's ``q[Tl, Hq, d]``, ``k/v[Tl, Hkv, d]`` and the *global* ``cu_seqlens``
    ``[D+1]`` int32 (``cu_seqlens[-1] == P*Tl``) and returns ``[Tl, Hq, d]``. Other keywords go to
    `inner` unchanged (e.g. ``sliding_window``), except per-head tensors (:data:`PER_HEAD_KWARGS`,
    ``[Hq]``), which are cut to this rank's heads.

    Raises:
        ValueError: heads not divisible (see :func:`kv_repeat_for_sp`), or ``cu_seqlens[-1]`` is not
            ``sp_size * Tl`` (the batch was not sharded with :func:`xt.parallel.sp_batch.shard_batch_for_sp`).
    """

    def __init__(self, inner, sp_group: dist.ProcessGroup) -> None:
        super().__init__()
        self.inner = inner
        self.sp_group = sp_group
        self.sp_size = dist.get_world_size(sp_group)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: int | None = None, **kwargs) -> torch.Tensor:
        p = self.sp_size
        q, k, v = autocast_inputs(q, k, v)  # cast before the all-to-all: half the bytes under bf16 autocast
        rep = kv_repeat_for_sp(q.shape[1], k.shape[1], p)
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        if not torch.compiler.is_compiling() and cu_seqlens.numel() and cu_seqlens.device.type == "cpu":
            if int(cu_seqlens[-1]) != p * q.shape[0]:  # checked before any collective
                raise ValueError(f"Ulysses: global cu_seqlens[-1]={int(cu_seqlens[-1])} but sp_size*local tokens = "
                                 f"{p}*{q.shape[0]}; shard the batch with shard_batch_for_sp")
        q2, k2, v2 = (seq_to_heads(t, self.sp_group, p) for t in (q, k, v))
        hq_local = q.shape[1] // p
        rank = dist.get_rank(self.sp_group)
        for name in PER_HEAD_KWARGS:
            t = kwargs.get(name)
            if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == q.shape[1]:
                kwargs[name] = t[rank * hq_local:(rank + 1) * hq_local]
        out = self.inner(q2, k2, v2, cu_seqlens, max_seqlen, **kwargs)
        return heads_to_seq(out, self.sp_group, p)
