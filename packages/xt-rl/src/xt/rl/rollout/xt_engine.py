"""XT's own rollout engine: batched KV-cache generation (`xt.models.common.generate.generate_detailed`)
on any device the model runs on, answering the rollout protocol (`xt.rl.rollout.protocol`).

The engine holds a model (the policy itself when trainer and rollout share a process, or a copy it
keeps in sync with :meth:`XTRolloutEngine.load_weights`). Routed experts are recorded through
`xt.models.common.routing_replay.record_routing` (forward hooks on the routers); the model code is not
touched. The precision it computes in is a `xt.rl.rollout.precision.RolloutPrecision` (``rollout.dtype``):
fp32 by default, or the trainer's (bf16 autocast with compute copies) entered around each request.
"""
from __future__ import annotations

import time
from collections.abc import Mapping

import torch
from torch import nn

from xt.models.common.generate import generate_detailed
from xt.models.common.routing_replay import decoder_routers
from xt.rl.rollout.precision import FP32_ROLLOUT, RolloutPrecision
from xt.rl.rollout.protocol import IntArray, RolloutRequest, RolloutResult, RolloutSample

__all__ = ["XTRolloutEngine"]


class XTRolloutEngine:
    """Rollouts with XT's KV-cache generation.

    Args:
        model: a zoo causal LM (XT families); generation runs it in eval mode without grad.
        weight_version: the version of the weights it holds now.
        max_batch_sequences: sequences generated together at most (the request is cut into chunks
            of this many; 0 = all at once). The samples do not depend on it except through the RNG
            stream, which is drawn per chunk in order: a chunk draws one row per sequence per decode
            step it runs, including the few steps (< 8; CUDA < 16) past its last stop token before
            the fast decode loop notices (`xt.models.common.fast_decode`), so the chunk size
            changes which draws a later chunk gets.
        precision: how the model computes (`xt.rl.rollout.precision`); default fp32 weights
            without autocast.
        cuda_graph: replay the decode steps from a CUDA graph on CUDA where the model allows it
            (``rollout.cuda_graph``; `xt.models.common.decode_graph`); False: eager.

    Raises:
        ValueError: a negative `max_batch_sequences`.
    """

    def __init__(self, model: nn.Module, *, weight_version: int = 0, max_batch_sequences: int = 0,
                 precision: RolloutPrecision = FP32_ROLLOUT, cuda_graph: bool = True) -> None:
        if max_batch_sequences < 0:
            raise ValueError(f"max_batch_sequences must be >= 0, got {max_batch_sequences}")
        self.model = model
        self.weight_version = weight_version
        self.max_batch_sequences = max_batch_sequences
        self.precision = precision
        self.cuda_graph = cuda_graph
        self.has_moe = bool(decoder_routers(model))

    def load_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> None:
        """Copy the policy's weights in (strict key match) and set the weight version. The copy
        writes the fp32 weights in place, so compute copies of them are re-cast before the next
        generation (their version counters changed).

        Raises:
            RuntimeError: (from ``load_state_dict``) keys or shapes that do not match.
        """
        if state_dict is not None:
            self.model.load_state_dict(state_dict, strict=True)
        self.weight_version = version

    def generate(self, request: RolloutRequest) -> RolloutResult:
        """Sample ``request.n`` responses per prompt (prompt-major); see `RolloutRequest`.

        Raises:
            ValueError: an empty prompt list or prompt, or ``n < 1``.
        """
        if not request.prompts or any(len(p) == 0 for p in request.prompts) or request.n < 1:
            raise ValueError("rollout request: need >= 1 non-empty prompt and n >= 1")
        sp = request.sampling
        flat = [(i, p) for i, p in enumerate(request.prompts) for _ in range(request.n)]
        dev = next(self.model.parameters()).device
        gen = torch.Generator(device=dev).manual_seed(request.seed)
        chunk = self.max_batch_sequences or len(flat)
        record = request.record_experts and self.has_moe
        t0 = time.perf_counter()
        samples: list[RolloutSample] = []
        for a in range(0, len(flat), chunk):
            part = flat[a:a + chunk]
            with self.precision.context():
                g = generate_detailed(self.model, [p for _, p in part], sp.max_new_tokens, sp.temperature,
                                      sp.top_p, list(sp.stop_token_ids), gen, record_experts=record,
                                      cuda_graph=self.cuda_graph)
            for j, (i, p) in enumerate(part):
                routed = IntArray.from_tensor(g.routed_experts[j]) if g.routed_experts is not None else None
                samples.append(RolloutSample(prompt_index=i, prompt_ids=list(p), response_ids=g.tokens[j],
                                             log_probs=g.log_probs[j], finish_reason=g.finish_reasons[j],
                                             weight_version=self.weight_version, routed_experts=routed))
        return RolloutResult(samples=samples, weight_version=self.weight_version,
                             seconds=time.perf_counter() - t0, request_id=request.request_id)
