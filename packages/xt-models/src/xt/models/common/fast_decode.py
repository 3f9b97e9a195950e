"""The fast decode loop of :func:`xt.models.common.generate.generate_detailed`: per-sequence KV caches
and everything per token kept on the device.

After the prefill (the prompts, one packed forward), every step feeds one token per sequence and
attends it over that sequence's own cache (:mod:`xt.models.common.sequence_cache`); the prefill
applies the LM head to each prompt's last token only (``[B, V]`` logits rather than ``[T, V]``) when
the model's forward offers ``return_hidden`` (every zoo family, `xt.models.common.lm_loss.head_outputs`). Tokens,
log-probs and finished flags go into preallocated ``[B, max_new_tokens]`` device tensors; the host
reads nothing per token: whether all sequences have finished is read every
:data:`FINISH_CHECK_EVERY` steps (on CUDA from a flag copied asynchronously one check earlier, so
the read never waits for the GPU), and each sequence is cut after its first stop token at the end.
The capacity of the caches is fixed up front (longest prompt + ``max_new_tokens`` + 1), so steps
check nothing on the device. Finished sequences keep decoding (their tokens are dropped), so every
step has the same ``B`` and the random stream draws one row per sequence per step, as the reference
loop does: up to the step where the reference stops, the samples are the same.

On CUDA, for models without MoE layers, the decode steps after the first few run from a CUDA graph
(:mod:`xt.models.common.decode_graph`): every such step attends all cache slots under a mask, writes its
token / log-prob column at a device counter and its next input into a fixed buffer, so its shapes and
addresses never change. MoE layers size their expert batches from the routing (data-dependent
shapes), so those models decode eagerly; ``cuda_graph=False`` does too.

Shape legend: B sequences, N = ``max_new_tokens``, V vocabulary, L MoE layers, K experts per token.
"""
from __future__ import annotations

import inspect
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from xt.models.common.decode_graph import DecodeGraph, graph_blocker, has_moe_layers
from xt.models.common.routing_replay import RoutingRecord, record_routing
from xt.models.common.sampling import processed_log_probs, sample_next
from xt.models.common.sequence_cache import SequenceCacheState, SequenceCachedAttention, swap_core_attention

__all__ = ["FINISH_CHECK_EVERY", "FinishedPoll", "decode_on_device"]

#: decode steps between two looks at "have all sequences finished" (a host read)
FINISH_CHECK_EVERY = 8


class FinishedPoll:
    """Answers "have all sequences finished" every ``every`` steps without stalling the host on CUDA.

    Args:
        finished: ``[B]`` bool device tensor, updated in place by the decode loop.
        every: steps between checks, >= 1.

    On CPU the flag is read when asked. On CUDA each check copies ``finished.all()`` into pinned
    memory without blocking and answers with the copy of the previous check (``every`` steps old,
    so long done): a finished batch is noticed at most ``2 * every - 1`` steps late.

    Raises:
        ValueError: ``every < 1``.
    """

    def __init__(self, finished: torch.Tensor, every: int) -> None:
        if every < 1:
            raise ValueError(f"the finished check needs every >= 1, got {every}")
        self.finished, self.every = finished, every
        self._pending: tuple[torch.Tensor, torch.cuda.Event] | None = None

    def __call__(self, step: int) -> bool:
        """True when all sequences are known finished after ``step`` steps (checked when
        ``step % every == 0``; False otherwise)."""
        if step % self.every:
            return False
        if not self.finished.is_cuda:
            return bool(self.finished.all())
        flag = torch.empty((), dtype=torch.bool, pin_memory=True)
        flag.copy_(self.finished.all(), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        previous, self._pending = self._pending, (flag, event)
        if previous is None:
            return False
        previous[1].synchronize()
        return bool(previous[0])


def _routing_per_sequence(rec: RoutingRecord, prompt_cu: list[int], totals: list[int]) -> list[torch.Tensor]:
    """Per sequence b ``[L, totals[b], K]`` int64 (CPU): its prompt tokens' experts from the prefill
    call (tokens ``prompt_cu[b]:prompt_cu[b+1]``), then its new tokens' from the decode calls (call
    c routes row b's token c - 1). One device-to-host copy of the whole record."""
    prefill = rec.call(0).cpu()
    decode = (torch.stack([torch.stack(per_router[1:]) for per_router in rec.calls]).cpu()
              if rec.num_calls > 1 else None)  # [L, calls - 1, B, K]
    out = []
    for b, n in enumerate(totals):
        part = prefill[:, prompt_cu[b]:prompt_cu[b + 1]]
        new = n - part.shape[1]
        out.append(torch.cat([part, decode[:, :new, b]], dim=1) if new > 0 else part.clone())
    return out


def decode_on_device(model: nn.Module, prompts: list[list[int]] | list[torch.Tensor], max_new_tokens: int,
                     temperature: float, top_p: float, eos: set[int], generator: torch.Generator | None,
                     record_experts: bool, extra: dict, check_every: int = FINISH_CHECK_EVERY,
                     cuda_graph: bool = True) -> tuple[list[list[int]], list[list[float]], list[torch.Tensor] | None]:
    """Generate for B prompts with per-sequence caches and no per-token host read (module docstring).

    Args:
        model: a zoo causal LM in eval mode (the caller sets the mode and ``no_grad``).
        prompts: B non-empty token lists or 1-D int tensors (validated by the caller).
        max_new_tokens: N >= 0.
        temperature, top_p, generator: as in :func:`xt.models.common.sampling.sample_next`.
        eos: stop token ids (empty: none).
        record_experts: record every decoder MoE layer's experts for every prompt and kept token
            (the final tokens are routed by one more forward, as in the reference loop).
        extra: keywords for the prefill forward only (e.g. ``pixel_values``).
        check_every: steps between "all finished?" reads (:class:`FinishedPoll`).
        cuda_graph: replay the decode steps from a CUDA graph where the call allows it
            (:func:`~xt.models.common.decode_graph.graph_blocker`); False: always eager.

    Returns:
        ``(tokens, log_probs, routed)``: per sequence the new tokens through the first stop token,
        their float32 log-probabilities under the sampled distribution
        (:func:`~xt.models.common.sampling.processed_log_probs`), and with ``record_experts`` on a
        model with MoE layers ``[L, len(prompt) + len(tokens), K]`` int64 CPU expert ids (else None).
    """
    dev = next(model.parameters()).device
    B, lengths = len(prompts), [len(p) for p in prompts]
    state = SequenceCacheState(B, max(lengths) + max_new_tokens + 1, dev)
    ids = torch.cat([torch.as_tensor(p, dtype=torch.int64) for p in prompts]).to(dev)
    prompt_cu = [0]
    for n in lengths:
        prompt_cu.append(prompt_cu[-1] + n)
    cu = torch.tensor(prompt_cu, dtype=torch.int32).to(dev)
    last_of_prompt = (cu[1:] - 1).long()
    tokens = torch.zeros(B, max_new_tokens, dtype=torch.int64, device=dev)
    logps = torch.zeros(B, max_new_tokens, dtype=torch.float32, device=dev)
    finished = torch.zeros(B, dtype=torch.bool, device=dev)
    cur = torch.zeros(B, dtype=torch.int64, device=dev)  # each sequence's newest token: the next step's input
    col = torch.zeros(1, dtype=torch.int64, device=dev)  # the column of tokens / logps the next sample goes to
    stops = torch.tensor(sorted(eos), dtype=torch.int64, device=dev) if eos else None
    poll = FinishedPoll(finished, check_every)
    head_apart = "return_hidden" in inspect.signature(model.forward).parameters
    blocker = graph_blocker(model, dev, generator, max_new_tokens - 1) if cuda_graph else "cuda_graph=False"
    routes = record_experts and has_moe_layers(model)

    def take(logits: torch.Tensor) -> None:
        """Sample from ``logits [B, V]`` and write the tokens / log-probs at column ``col`` (device ops only)."""
        nxt = sample_next(logits, temperature, top_p, generator)
        tokens.index_copy_(1, col, nxt[:, None])
        logps.index_copy_(1, col, processed_log_probs(logits, temperature, top_p).gather(1, nxt[:, None]))
        col.add_(1)
        cur.copy_(nxt)
        if stops is not None:
            torch.logical_or(finished, torch.isin(nxt, stops), out=finished)

    def prefill() -> torch.Tensor:
        pos = state.begin_prefill(lengths)
        kw = dict(input_ids=ids, position_ids=pos, cu_seqlens=cu, max_seqlen=max(lengths), **extra)
        if head_apart:  # the head on each prompt's last token only: [B, V] logits, not [T, V]
            o = model(**kw, return_hidden=True)
            logits = F.linear(o.hidden[last_of_prompt], o.head_weight)
        else:
            logits = model(**kw).logits[last_of_prompt]
        state.end_step()
        return logits

    def decode() -> torch.Tensor:
        pos = state.begin_decode()
        logits = model(input_ids=cur, position_ids=pos, cu_seqlens=state.decode_cu_seqlens, max_seqlen=1).logits
        state.end_step()
        return logits

    def static_step() -> None:
        """One decode step with fixed shapes and addresses (what the CUDA graph records)."""
        pos = state.begin_static_decode()
        logits = model(input_ids=cur, position_ids=pos, cu_seqlens=state.decode_cu_seqlens, max_seqlen=1).logits
        state.end_static_step()
        take(logits)

    make = lambda core: SequenceCachedAttention(state, getattr(core, "softmax_scale", None))  # noqa: E731
    steps = 0
    graph = None if blocker else DecodeGraph(static_step, generator, on_eager_step=state.count_static_step)
    with swap_core_attention(model, make), (record_routing(model, keep_on_device=True) if routes
                                            else nullcontext()) as rec:
        while steps < max_new_tokens:
            if steps == 0:
                take(prefill())
                steps = 1
            elif graph is None:
                take(decode())
                steps += 1
            elif not graph.ready:  # real steps on a side stream, then the capture (which takes none)
                steps += graph.warm_up_and_capture()
            else:
                state.begin_static_decode()  # the host's capacity check of the step the replay takes
                graph.replay()
                state.count_static_step()
                steps += 1
            if stops is not None and poll(steps):
                break
        if routes:  # route the final tokens too (the prompts when max_new_tokens = 0)
            prefill() if steps == 0 else decode()
    tok = tokens[:, :steps].cpu()
    lp = logps[:, :steps].cpu().tolist()
    keep = [steps] * B
    if stops is not None and steps:
        hit = torch.isin(tok, stops.cpu())
        keep = torch.where(hit.any(1), hit.int().argmax(1) + 1, steps).tolist()
    rows = tok.tolist()
    out = [row[:k] for row, k in zip(rows, keep)]
    out_lp = [row[:k] for row, k in zip(lp, keep)]
    routed = (_routing_per_sequence(rec, prompt_cu, [n + k for n, k in zip(lengths, keep)])
              if routes and rec.calls else None)
    return out, out_lp, routed
