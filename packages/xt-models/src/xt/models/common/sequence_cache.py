"""Per-sequence KV caches for the fast decode path of :mod:`xt.models.common.generate`.

Each of the B sequences has its own cache ``[G, Lc, D]`` per layer, and every new token attends only
over its own sequence's cached keys, with a key-length mask (plus the sliding window); a decode step
(one new token per sequence) is ``q [B, H, 1, D]`` against ``k [B, G, used, D]``: O(B * L) work per
step, where attending over the concatenated caches of all sequences with a document mask (the
reference path, :class:`xt.models.common.generate.CachedCoreAttention`) is O(B^2 * L). This is the
per-sequence (paged) KV-cache layout of serving engines (Kwon et al. 2023, "Efficient Memory
Management for Large Language Model Serving with PagedAttention", arXiv:2309.06180; here one
contiguous page per sequence, sized up front).

Nothing here reads the device on the host: the bookkeeping that decides shapes (the longest cached
sequence, hence how many key slots a step attends over) is known on the host because a decode step
adds exactly one token to every sequence. The static tensors (key positions, a decode step's
``cu_seqlens``, sequence indices) are built once.

Shape legend: B sequences, T new tokens of a step (packed), S new tokens per sequence (padded; 1 in
decode), Lc cache capacity, ``used`` key slots attended (<= Lc), H/G query/key-value heads
(H % G == 0, r = H // G), Dq/Dv head dims.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KEY_BLOCK", "sequence_attention", "SequenceCacheState", "SequenceCachedAttention",
           "swap_core_attention"]

#: the key slots a step attends over are rounded up to a multiple of this (masked keys add nothing), so
#: a decode run sees one attention shape per block of steps rather than one per step
KEY_BLOCK = 16


def sequence_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
                       sinks: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of each sequence's new queries over that sequence's own keys.

    Grouped key/value heads are handled by folding the ``r = H // G`` query heads of a group into
    the query axis (query head ``h`` reads key/value head ``h // r``, as ``repeat_interleave`` in
    :func:`xt.models.common.sinks_attention.core_attention`), so the cache is never copied per head.

    Args:
        q: ``[B, S, H, Dq]``.
        k: ``[B, G, L, Dq]`` (a view of the cache is fine).
        v: ``[B, G, L, Dv]``.
        mask: ``[B, S, L]`` bool, True = attend; every row needs one True (or sinks).
        scale: softmax scale.
        sinks: ``[H]`` learned sink logits (GPT-OSS: one extra softmax logit per head, no value), or None.

    Returns:
        ``[B, S, H, Dv]`` in ``q.dtype``. Without sinks: SDPA; with sinks an explicit softmax
        (float32 for bf16/fp16 inputs) over ``[scores, sink]`` whose sink column is dropped.

    Raises:
        ValueError: H not a multiple of G.
    """
    B, S, H, Dq = q.shape
    G, L, Dv = k.shape[1], k.shape[2], v.shape[-1]
    if H % G:
        raise ValueError(f"attention: num_attention_heads={H} is not a multiple of num_key_value_heads={G}")
    r = H // G
    qg = q.view(B, S, G, r, Dq).permute(0, 2, 3, 1, 4).reshape(B, G, r * S, Dq)  # row j * S + s
    m = mask[:, None] if S == 1 else mask[:, None, None].expand(B, 1, r, S, L).reshape(B, 1, r * S, L)
    if sinks is None:
        out = F.scaled_dot_product_attention(qg, k, v, attn_mask=m, scale=scale)
    else:
        acc = torch.float32 if q.dtype in (torch.bfloat16, torch.float16) else q.dtype
        scores = torch.matmul(qg.to(acc), k.to(acc).transpose(-1, -2)) * scale
        scores = scores.masked_fill(~m, float("-inf"))
        sink = sinks.to(acc).view(G, r, 1).expand(G, r, S).reshape(1, G, r * S, 1).expand(B, G, r * S, 1)
        logits = torch.cat([scores, sink], dim=-1)
        logits = logits - logits.max(dim=-1, keepdim=True).values
        probs = torch.softmax(logits, dim=-1)[..., :-1]
        out = torch.matmul(probs.to(v.dtype), v)
    return out.view(B, G, r, S, Dv).permute(0, 3, 1, 2, 4).reshape(B, S, H, Dv)


class SequenceCacheState:
    """Bookkeeping shared by all layers' :class:`SequenceCachedAttention` during one generation.

    Args:
        batch: B.
        capacity: Lc, cache slots per sequence (checked once per step on the host, never exceeded by
            :func:`xt.models.common.fast_decode.decode_on_device`, which sizes it up front).
        device: where the caches live.

    Attributes:
        lengths: ``[B]`` int64 (device), tokens cached per sequence before the current step; in a
            decode step also each sequence's next rotary position (updated in place).
        cached_max: the largest of ``lengths`` (host int, tracked without reading the device; an
            upper bound after a prefill into non-empty caches).
        decode_cu_seqlens: ``[B+1]`` int32 ``0..B``, the ``cu_seqlens`` of every decode step.

    The current step (set by :meth:`begin_prefill` / :meth:`begin_decode`): ``doc, row [T]`` int64,
    the sequence and in-step index of each new token (its cache slot is ``lengths[doc] + row``),
    ``S`` the padded new tokens per sequence and ``used`` the key slots attended.
    """

    def __init__(self, batch: int, capacity: int, device: torch.device) -> None:
        self.batch, self.capacity = batch, capacity
        self.lengths = torch.zeros(batch, dtype=torch.int64, device=device)
        self.cached_max = 0
        self.decode_cu_seqlens = torch.arange(batch + 1, dtype=torch.int32, device=device)
        self._seq = torch.arange(batch, device=device)
        self._zeros = torch.zeros(batch, dtype=torch.int64, device=device)
        self._key_pos = torch.arange(capacity, device=device)
        self.doc, self.row, self.slot = self._seq, self._zeros, self.lengths
        self.S, self.used = 1, 0
        self._masks: dict[int | None, torch.Tensor] = {}
        self._step_new: torch.Tensor | None = None

    def _set_used(self, longest: int) -> None:
        if longest > self.capacity:
            raise ValueError(f"KV cache capacity {self.capacity} exceeded (a sequence would hold {longest} tokens)")
        self.used = min(self.capacity, -(-longest // KEY_BLOCK) * KEY_BLOCK)
        self._masks.clear()

    def begin_prefill(self, counts: list[int]) -> torch.Tensor:
        """Start a step of ``counts[b]`` new tokens for sequence b (packed in sequence order; any
        counts, e.g. the prompts). Returns their rotary positions ``[T]`` int64.

        Raises:
            ValueError: ``len(counts) != B``, a negative count, or the capacity would be exceeded.
        """
        if len(counts) != self.batch or min(counts) < 0:
            raise ValueError(f"a step needs B={self.batch} non-negative token counts; got {counts}")
        dev = self.lengths.device
        n = torch.tensor(counts, dtype=torch.int64)
        self.doc = torch.repeat_interleave(torch.arange(self.batch), n).to(dev)
        starts = torch.cumsum(n, 0) - n
        self.row = (torch.arange(int(n.sum())) - starts.repeat_interleave(n)).to(dev)
        self.slot = self.lengths[self.doc] + self.row
        self.S = max(counts)
        self._step_new = n.to(dev)
        self._set_used(self.cached_max + self.S)
        return self.slot

    def begin_decode(self) -> torch.Tensor:
        """Start a decode step: one new token per sequence (packed as ``[B]``, in order). Returns
        their rotary positions ``[B]`` int64 (``lengths`` itself: do not modify).

        Raises:
            ValueError: the capacity would be exceeded.
        """
        self.doc, self.row, self.slot, self.S, self._step_new = self._seq, self._zeros, self.lengths, 1, None
        self._set_used(self.cached_max + 1)
        return self.lengths

    def begin_static_decode(self) -> torch.Tensor:
        """Start a decode step whose shapes never change, for a CUDA-graph capture
        (:mod:`xt.models.common.decode_graph`): one new token per sequence, attending all ``capacity``
        key slots (those not yet written are masked). End it with :meth:`end_static_step`. Returns the
        rotary positions ``[B]`` int64 (``lengths`` itself: do not modify).

        Raises:
            ValueError: the capacity would be exceeded (checked on the host, outside any graph).
        """
        self.doc, self.row, self.slot, self.S, self._step_new = self._seq, self._zeros, self.lengths, 1, None
        if self.cached_max + 1 > self.capacity:
            raise ValueError(f"KV cache capacity {self.capacity} exceeded (a sequence would hold "
                             f"{self.cached_max + 1} tokens)")
        self.used = self.capacity
        self._masks.clear()
        return self.lengths

    def end_static_step(self) -> None:
        """Count a static decode step's token as cached: ``lengths += 1`` on the device (captured with
        the step) and the masks of the step dropped. The host count ``cached_max`` is advanced by
        :meth:`count_static_step`, once per step run (a graph replay runs no Python)."""
        self.lengths.add_(1)
        self._masks.clear()

    def count_static_step(self) -> None:
        """Advance the host count ``cached_max`` by the one token a static decode step caches."""
        self.cached_max += 1

    def end_step(self) -> None:
        """Count the step's new tokens as cached."""
        if self._step_new is None:
            self.lengths += 1
            self.cached_max += 1
        else:  # exact after a prefill of empty caches, an upper bound otherwise (extra slots are masked)
            self.lengths += self._step_new
            self.cached_max += self.S
            self._step_new = None
        self._masks.clear()

    def mask(self, sliding_window: int | None) -> torch.Tensor:
        """``[B, S, used]`` bool: key slot j is attended by new token s of sequence b when
        ``j <= lengths[b] + s`` (and ``lengths[b] + s - j < W`` with a window W). Built once per step
        and window, shared by the layers. Rows of padded queries (s beyond a sequence's new tokens)
        attend to something and are dropped by the caller."""
        if sliding_window not in self._masks:
            q_pos = self.lengths[:, None, None] + torch.arange(self.S, device=self.lengths.device)[None, :, None]
            k_pos = self._key_pos[:self.used]
            m = k_pos <= q_pos
            if sliding_window is not None:
                m = m & (q_pos - k_pos < sliding_window)
            self._masks[sliding_window] = m
        return self._masks[sliding_window]


class SequenceCachedAttention(nn.Module):
    """Core attention over per-sequence KV caches; drop-in for a layer's ``core_attention`` while
    :func:`xt.models.common.fast_decode.decode_on_device` runs.

    Args:
        state: the shared :class:`SequenceCacheState`.
        softmax_scale: the replaced core's scale (None: ``Dq ** -0.5``).

    ``forward(q[T, H, Dq], k[T, G, Dq], v[T, G, Dv], cu_seqlens, max_seqlen, sliding_window=None,
    sinks=None) -> [T, H, Dv]``: writes k/v to the new tokens' slots of their sequence's cache
    (``[B, G, Lc, D]``, allocated at the first call in k's/v's dtype), then attends each new token
    over its own sequence's cache (:func:`sequence_attention`). ``cu_seqlens``/``max_seqlen`` are
    those of the step the state was told about (not read).
    """

    def __init__(self, state: SequenceCacheState, softmax_scale: float | None) -> None:
        super().__init__()
        self.state, self.softmax_scale = state, softmax_scale
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    def forward(self, q, k, v, cu_seqlens, max_seqlen, sliding_window=None, sinks=None):
        """Cache the step's keys/values and attend (shapes in the class docstring)."""
        st = self.state
        B, H = st.batch, q.shape[1]
        if self.k_cache is None:
            self.k_cache = k.new_zeros(B, k.shape[1], st.capacity, k.shape[2])
            self.v_cache = v.new_zeros(B, v.shape[1], st.capacity, v.shape[2])
        self.k_cache[st.doc, :, st.slot] = k.to(self.k_cache.dtype)
        self.v_cache[st.doc, :, st.slot] = v.to(self.v_cache.dtype)
        if st.S == 1:
            qp = q.view(B, 1, H, q.shape[-1])
        else:
            qp = q.new_zeros(B, st.S, H, q.shape[-1])
            qp[st.doc, st.row] = q
        scale = self.softmax_scale if self.softmax_scale is not None else q.shape[-1] ** -0.5
        out = sequence_attention(qp, self.k_cache[:, :, :st.used], self.v_cache[:, :, :st.used],
                                 st.mask(sliding_window), scale, sinks)
        return out.view(B, H, -1) if st.S == 1 else out[st.doc, st.row]


@contextmanager
def swap_core_attention(model: nn.Module, make: Callable[[nn.Module], nn.Module],
                        skip: tuple[type, ...] = ()) -> Iterator[None]:
    """Replace every ``core_attention`` module attribute of ``model``'s modules by ``make(core)``
    for the duration of the context (restored afterwards, also on error); cores that are instances
    of ``skip`` stay."""
    swapped = []
    for mod in model.modules():
        core = getattr(mod, "core_attention", None)
        if isinstance(core, nn.Module) and not isinstance(core, skip):
            swapped.append((mod, core))
            mod.core_attention = make(core)
    try:
        yield
    finally:
        for mod, core in swapped:
            mod.core_attention = core
