"""KV-cache generation (greedy, or sampling with temperature and top-p) for every zoo causal LM.

Works with any model whose attention layers call a swappable ``core_attention`` module as
``core_attention(q[T, H, Dq], k[T, G, Dq], v[T, G, Dv], cu_seqlens, max_seqlen, **kw)`` (keywords
``sliding_window``/``sinks`` optional) and whose ``forward(input_ids[T], position_ids=,
cu_seqlens=, max_seqlen=)`` returns ``.logits [T, V]`` (Qwen3, Llama, DeepSeek-V3, GPT-OSS; InternVL,
whose prompts may carry images: ``pixel_values`` go to the prompt's forward). During
:func:`generate` every ``core_attention`` is temporarily replaced by a cache-attending module; the
model code is unchanged. Prompts of different lengths need no padding: the prefill is one packed
batch of all prompts, every later step one token per sequence.

Two decode loops (``decode_path``):

- ``"fast"`` (default, :mod:`xt.models.common.fast_decode`): per-sequence caches
  (:class:`~xt.models.common.sequence_cache.SequenceCachedAttention`, O(B * L) attention per step),
  tokens / log-probs / finished flags kept on the device, "all finished?" read every few steps;
- ``"reference"``: :class:`CachedCoreAttention` attends every new token over the concatenated caches
  of all sequences with a document mask (O(B^2 * L) per step) and the host reads the step's tokens
  every step. Kept as the reference the fast loop is tested and benchmarked against.

Shape legend: B sequences, T new tokens of a step (sum over sequences), Lc cache capacity,
H/G query/key-value heads, Dq/Dv head dims, V vocabulary.

Sampling (:mod:`xt.models.common.sampling`, re-exported here): temperature scaling then nucleus
(top-p) filtering (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration",
arXiv:1904.09751).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from xt.models.common.fast_decode import decode_on_device
from xt.models.common.routing_replay import RoutingRecord, record_routing
from xt.models.common.sampling import processed_log_probs, sample_next
from xt.models.common.sequence_cache import swap_core_attention
from xt.models.common.sinks_attention import core_attention, document_mask, packed_doc_positions

__all__ = ["DECODE_PATHS", "DecodeState", "CachedCoreAttention", "use_kv_cache", "processed_log_probs", "sample_next",
           "Generation", "generate_detailed", "generate"]


class DecodeState:
    """Cache bookkeeping shared by all layers: ``lengths [B]`` cached tokens per sequence before the
    current step, the step's ``cu_seqlens`` and capacity ``Lc``."""

    def __init__(self, batch: int, capacity: int, device: torch.device) -> None:
        self.capacity = capacity
        self.lengths = torch.zeros(batch, dtype=torch.int64, device=device)
        self.cu_seqlens: torch.Tensor | None = None
        self._layout: dict[tuple, tuple] = {}  # this step's slots and masks, the same in every layer

    def step_layout(self, cu_seqlens: torch.Tensor, total: int, sliding_window: int | None
                    ) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
        """``(doc [T], slot [T], used, mask [T, B * used])`` of the step's new tokens: their
        sequence, cache slot, the cache slots in use after the step, and which cached keys each
        may attend to. Computed once per step (and window) and shared by all layers.

        Raises:
            ValueError: when the cache capacity would be exceeded.
        """
        key = (total, sliding_window)
        if key not in self._layout:
            B = self.lengths.numel()
            doc, pos = packed_doc_positions(cu_seqlens, total)
            slot = self.lengths[doc] + pos
            if int(slot.max()) >= self.capacity:
                raise ValueError(f"KV cache capacity {self.capacity} exceeded")
            used = int((self.lengths + (cu_seqlens[1:] - cu_seqlens[:-1])).max())
            k_doc = torch.arange(B, device=cu_seqlens.device).repeat_interleave(used)
            k_pos = torch.arange(used, device=cu_seqlens.device).repeat(B)
            self._layout[key] = (doc, slot, used, document_mask(doc, slot, k_doc, k_pos, sliding_window))
        return self._layout[key]

    def positions(self, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """``[T]`` cache slot (= rotary position) of each new token of a step."""
        doc, pos = packed_doc_positions(cu_seqlens, int(cu_seqlens[-1]))
        return self.lengths[doc] + pos

    def advance(self, cu_seqlens: torch.Tensor) -> None:
        """Count the step's new tokens as cached."""
        self.lengths += (cu_seqlens[1:] - cu_seqlens[:-1]).to(self.lengths)
        self._layout.clear()


class CachedCoreAttention(nn.Module):
    """Core attention over a KV cache; drop-in for a layer's ``core_attention`` during decoding.

    Args:
        state: the shared :class:`DecodeState`.
        softmax_scale: the replaced core's scale (None: ``Dq ** -0.5``).

    ``forward(q[T, H, Dq], k[T, G, Dq], v[T, G, Dv], cu_seqlens[B+1], max_seqlen, sliding_window=None,
    sinks=None) -> [T, H, Dv]``: writes k/v to slots ``lengths[b] + i`` of sequence b, then every new
    token attends to its own sequence's cached slots up to itself (and within the window).
    """

    def __init__(self, state: DecodeState, softmax_scale: float | None) -> None:
        super().__init__()
        self.state, self.softmax_scale = state, softmax_scale
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    def forward(self, q, k, v, cu_seqlens, max_seqlen, sliding_window=None, sinks=None):
        """Cache the step's keys/values and attend over the cache (shapes in the class docstring).

        Raises:
            ValueError: when the cache capacity would be exceeded.
        """
        st = self.state
        B = st.lengths.numel()
        if self.k_cache is None:
            self.k_cache = k.new_zeros(B, st.capacity, *k.shape[1:])
            self.v_cache = v.new_zeros(B, st.capacity, *v.shape[1:])
        doc, slot, used, mask = st.step_layout(cu_seqlens, q.shape[0], sliding_window)
        self.k_cache[doc, slot] = k
        self.v_cache[doc, slot] = v
        keys = self.k_cache[:, :used].reshape(B * used, *k.shape[1:])
        vals = self.v_cache[:, :used].reshape(B * used, *v.shape[1:])
        scale = self.softmax_scale if self.softmax_scale is not None else q.shape[-1] ** -0.5
        return core_attention(q[None], keys[None], vals[None], mask[None], scale, sinks)[0]


def use_kv_cache(model: nn.Module, state: DecodeState):
    """Swap every ``core_attention`` attribute of ``model``'s modules for a :class:`CachedCoreAttention`
    for the duration of the context (restored afterwards, also on error)."""
    return swap_core_attention(model, lambda core: CachedCoreAttention(state, getattr(core, "softmax_scale", None)),
                               skip=(CachedCoreAttention,))


@dataclass
class Generation:
    """What :func:`generate_detailed` returns, per sequence b of the B prompts.

    Attributes:
        tokens: the new token ids (the stop token included when emitted).
        log_probs: per new token, its float32 log-probability under the distribution it was drawn
            from (:func:`processed_log_probs`: temperature and top-p applied; greedy: the raw one).
        finish_reasons: ``"stop"`` (a stop token was emitted) or ``"length"`` (``max_new_tokens`` reached).
        routed_experts: with ``record_experts``, ``[L, len(prompt) + len(tokens), K]`` int64 expert ids of
            every decoder MoE layer for every prompt and response token (CPU); None without it or for
            a model without MoE layers.
    """
    tokens: list[list[int]]
    log_probs: list[list[float]]
    finish_reasons: list[str]
    routed_experts: list[torch.Tensor] | None = None


def _split_routing(rec: RoutingRecord, steps_cu: list[torch.Tensor], totals: list[int]) -> list[torch.Tensor]:
    """Per sequence ``[L, totals[b], K]``: the recorded step choices cut by each step's cu_seqlens."""
    per_seq: list[list[torch.Tensor]] = [[] for _ in totals]
    for c, cu in enumerate(steps_cu):
        ids = rec.call(c)
        for b in range(len(totals)):
            per_seq[b].append(ids[:, int(cu[b]):int(cu[b + 1])])
    return [torch.cat(parts, dim=1)[:, :n] for parts, n in zip(per_seq, totals)]


#: the decode loops :func:`generate_detailed` can run
DECODE_PATHS = ("fast", "reference")


@torch.no_grad()
def generate_detailed(model: nn.Module, prompts: list[list[int]] | list[torch.Tensor], max_new_tokens: int,
                      temperature: float = 0.0, top_p: float = 1.0, eos_token_id: int | list[int] | None = None,
                      generator: torch.Generator | None = None, record_experts: bool = False,
                      pixel_values: torch.Tensor | None = None, decode_path: str = "fast",
                      cuda_graph: bool = True) -> Generation:
    """Continue each prompt by up to ``max_new_tokens`` tokens with a KV cache (batched, no padding).

    Args:
        model: a zoo causal LM (see the module docstring); run in eval mode here (mode restored).
        prompts: B token lists (lengths may differ, each >= 1).
        max_new_tokens: tokens to add per sequence, >= 0.
        temperature, top_p, generator: see :func:`sample_next` (temperature 0 = greedy).
        eos_token_id: stop a sequence after it emits this token (or any of these tokens).
        record_experts: record the experts of every decoder MoE layer for every token
            (:mod:`xt.models.common.routing_replay`); the final tokens are then run through the model
            once more so that they, too, have their routing.
        pixel_values: for a vision-language model, ``[N, 3, S, S]`` the tiles of the prompts'
            images in the order of their image-token runs (prompts in order); given to the
            prompt's forward only (the new tokens are text). None: text only.
        decode_path: ``"fast"`` (default): per-sequence caches, no per-token host read
            (:mod:`xt.models.common.fast_decode`); ``"reference"``: the packed loop over one
            document-masked cache of all sequences (:class:`CachedCoreAttention`), with host reads
            every token, kept for comparisons. Same tokens and log-probs up to float rounding; the
            fast path may draw a few more rows from ``generator`` after the last sequence stopped
            (it notices every :data:`~xt.models.common.fast_decode.FINISH_CHECK_EVERY` steps).
        cuda_graph: on the fast path, replay the decode steps from a CUDA graph where the call
            allows it (CUDA, no MoE layers: :mod:`xt.models.common.decode_graph`); False: eager.

    Returns:
        :class:`Generation`.

    Raises:
        ValueError: an empty prompt, a negative ``max_new_tokens``, a bad temperature / top-p, or an
            unknown ``decode_path``.
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    if max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens}")
    if decode_path not in DECODE_PATHS:
        raise ValueError(f"generate: decode_path must be one of {DECODE_PATHS}, got {decode_path!r}")
    dev = next(model.parameters()).device
    eos = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
    tiles = {} if pixel_values is None else {"pixel_values": pixel_values.to(dev)}
    was_training = model.training
    model.eval()
    try:
        if decode_path == "fast":
            out, logps, routed = decode_on_device(model, prompts, max_new_tokens, temperature, top_p, eos,
                                                  generator, record_experts, tiles, cuda_graph=cuda_graph)
        else:
            out, logps, routed = _decode_reference(model, prompts, max_new_tokens, temperature, top_p, eos,
                                                   generator, record_experts, tiles)
    finally:
        model.train(was_training)
    reasons = ["stop" if o and o[-1] in eos else "length" for o in out]
    return Generation(out, logps, reasons, routed)


def _decode_reference(model: nn.Module, prompts: list[list[int]] | list[torch.Tensor], max_new_tokens: int,
                      temperature: float, top_p: float, eos: set[int], generator: torch.Generator | None,
                      record_experts: bool, tiles: dict
                      ) -> tuple[list[list[int]], list[list[float]], list[torch.Tensor] | None]:
    """The reference decode loop (``decode_path="reference"``): every step one packed forward over
    :class:`CachedCoreAttention`; returns ``(tokens, log_probs, routed)`` as
    :func:`xt.models.common.fast_decode.decode_on_device` does."""
    dev = next(model.parameters()).device
    B = len(prompts)
    lengths = [len(p) for p in prompts]
    state = DecodeState(B, max(lengths) + max_new_tokens + 1, dev)
    ids = torch.cat([torch.as_tensor(p, dtype=torch.int64) for p in prompts]).to(dev)
    cu = torch.zeros(B + 1, dtype=torch.int32, device=dev)
    cu[1:] = torch.tensor(lengths, device=dev).cumsum(0)
    out: list[list[int]] = [[] for _ in range(B)]
    logps: list[list[float]] = [[] for _ in range(B)]
    done = [False] * B
    steps_cu: list[torch.Tensor] = []

    def step(ids: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
        extra = tiles if not steps_cu else {}  # the images enter with the prompts only
        steps_cu.append(cu.cpu())
        logits = model(input_ids=ids, position_ids=state.positions(cu), cu_seqlens=cu,
                       max_seqlen=int((cu[1:] - cu[:-1]).max()), **extra).logits
        state.advance(cu)
        return logits[cu[1:].long() - 1]

    with use_kv_cache(model, state), (record_routing(model) if record_experts else nullcontext()) as rec:
        for i in range(max_new_tokens):
            last = step(ids, cu)
            nxt = sample_next(last, temperature, top_p, generator)
            lp = processed_log_probs(last, temperature, top_p).gather(1, nxt[:, None])[:, 0].tolist()
            for b, t in enumerate(nxt.tolist()):
                if not done[b]:
                    out[b].append(t)
                    logps[b].append(lp[b])
                    done[b] = t in eos
            ids = nxt
            cu = torch.arange(B + 1, dtype=torch.int32, device=dev)
            if all(done):
                break
        if record_experts:
            step(ids, cu)  # route the final tokens too (the prompts when max_new_tokens = 0)
    routed = (_split_routing(rec, steps_cu, [n + len(o) for n, o in zip(lengths, out)])
              if record_experts and rec.calls else None)
    return out, logps, routed


def generate(model: nn.Module, prompts: list[list[int]] | list[torch.Tensor], max_new_tokens: int,
             temperature: float = 0.0, top_p: float = 1.0, eos_token_id: int | list[int] | None = None,
             generator: torch.Generator | None = None, return_logprobs: bool = False,
             pixel_values: torch.Tensor | None = None) -> list[list[int]] | tuple[list[list[int]], list[list[float]]]:
    """Continue each prompt by up to ``max_new_tokens`` tokens with a KV cache
    (:func:`generate_detailed` without the extras).

    Args:
        model, prompts, max_new_tokens, temperature, top_p, eos_token_id, generator, pixel_values:
            as in :func:`generate_detailed`.
        return_logprobs: also return, per new token, its log-probability under the sampled
            distribution (:func:`processed_log_probs`; the raw ``log_softmax`` when greedy).

    Returns:
        B lists of new tokens (the eos token included when emitted); with ``return_logprobs`` a pair
        ``(tokens, logprobs)`` of equally shaped lists.

    Raises:
        ValueError: an empty prompt.
    """
    g = generate_detailed(model, prompts, max_new_tokens, temperature, top_p, eos_token_id, generator,
                          pixel_values=pixel_values)
    return (g.tokens, g.log_probs) if return_logprobs else g.tokens
