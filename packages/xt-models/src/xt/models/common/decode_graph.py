"""One decode step of the fast decode loop (:mod:`xt.models.common.fast_decode`) captured in a CUDA graph
and replayed for every later step.

A decode step of a small model is host-bound on a GPU: SmolLM2-135M (30 layers) spends ~30-45 ms of
Python and kernel launches per token on an H200 for ~1 ms of GPU work (benchmarks/rl/bench_trl.py).
A CUDA graph (NVIDIA, "CUDA Graphs", CUDA C++ Programming Guide; PyTorch's ``torch.cuda.graph``)
records the step's kernels once and replays them with one launch, so the per-token host cost goes.

A step can be captured when its shapes and addresses never change and it reads nothing on the host:
the fast loop's static decode step (:meth:`~xt.models.common.sequence_cache.SequenceCacheState.begin_static_decode`:
all cache slots attended under a mask; the step's column of the token / log-prob buffers chosen by a
device counter; the next input written into a fixed buffer; sampling by an exponential race with the
generator's state registered with the graph) meets this for models without MoE layers. MoE layers size
their expert batches from the routing (data-dependent shapes), so models with them decode eagerly
(:func:`graph_blocker` says why a model or call cannot be captured).

Autocast's cast cache would hand the graph tensors that are freed when the autocast region ends, so
the warm-up and the capture run with ``cache_enabled=False`` (PyTorch's rule for autocast in graphs).
"""
from __future__ import annotations

from collections.abc import Callable
import warnings
from contextlib import nullcontext

import torch
from torch import nn

__all__ = ["WARMUP_STEPS", "DecodeGraph", "graph_blocker", "has_moe_layers"]

#: static decode steps run eagerly (on a side stream) before the capture: compiled code, cuBLAS
#: handles and autotuning settle there, not inside the graph
WARMUP_STEPS = 1


def has_moe_layers(model: nn.Module) -> bool:
    """Whether ``model`` has MoE layers (an :class:`~xt.models.common.moe.MoEBlock` or grouped experts)."""
    from xt.models.common.experts import GroupedExperts
    from xt.models.common.moe import MoEBlock

    return any(isinstance(m, (MoEBlock, GroupedExperts)) for m in model.modules())


def graph_blocker(model: nn.Module, device: torch.device, generator: torch.Generator | None,
                  decode_steps: int) -> str | None:
    """Why the decode steps of this call cannot run from a CUDA graph, or None when they can.

    Args:
        model: the zoo causal LM about to decode.
        device: its device.
        generator: the sampling generator (None: greedy, or torch's default generator).
        decode_steps: decode steps the call will run at most (``max_new_tokens - 1``).

    Returns:
        A short reason (not CUDA, MoE layers, a generator on another device, too few steps to pay for
        the capture), or None.
    """
    if device.type != "cuda":
        return "not on CUDA"
    if decode_steps <= WARMUP_STEPS + 1:
        return f"{decode_steps} decode steps (a capture pays off after {WARMUP_STEPS + 1})"
    if has_moe_layers(model):
        return "MoE layers (expert batches sized by the routing)"
    if generator is not None and generator.device.type != "cuda":
        return f"a generator on {generator.device}"
    if generator is not None and not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        return "this torch cannot register a generator with a graph"
    return None


class DecodeGraph:
    """A decode step, warmed up and captured once, then replayed.

    Args:
        step: the static decode step: reads and writes only tensors that live across calls (the
            caches, the input / output buffers, the counters), returns nothing.
        generator: the CUDA generator it samples from (registered with the graph, so each replay
            draws fresh numbers and advances it), or None.
        on_eager_step: host bookkeeping after each eager warm-up step (a replay runs no Python, so the
            caller does it after each replay), or None.
        capture: False runs every step eagerly instead (``replay`` calls ``step``): the same static
            steps without a graph, to check them where CUDA graphs do not exist (a CPU).

    ``warm_up_and_capture()`` runs :data:`WARMUP_STEPS` real steps eagerly on a side stream, then
    records one step (recording runs no kernel: the step is not taken) and sets ``ready``;
    ``replay()`` takes one step. A capture that fails (an operation that cannot be recorded) warns,
    records why in ``failure`` and leaves ``graph`` None: ``replay()`` then runs the step eagerly.
    """

    def __init__(self, step: Callable[[], None], generator: torch.Generator | None,
                 on_eager_step: Callable[[], None] | None = None, capture: bool = True) -> None:
        self.step, self.generator, self.on_eager_step, self.capture = step, generator, on_eager_step, capture
        self.graph: torch.cuda.CUDAGraph | None = None
        self.ready = False
        self.failure: str | None = None  # why the capture failed (then every step runs eagerly)

    def _autocast(self):
        if not torch.is_autocast_enabled("cuda"):
            return nullcontext()
        return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)

    def warm_up_and_capture(self) -> int:
        """Take :data:`WARMUP_STEPS` steps eagerly, then capture one. Returns the steps taken."""
        self.ready = True
        if not self.capture:
            for _ in range(WARMUP_STEPS):
                self.step()
                if self.on_eager_step is not None:
                    self.on_eager_step()
            return WARMUP_STEPS
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), self._autocast():
            for _ in range(WARMUP_STEPS):
                self.step()
                if self.on_eager_step is not None:
                    self.on_eager_step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if self.generator is not None:
            graph.register_generator_state(self.generator)
        try:
            with torch.cuda.graph(graph), self._autocast():
                self.step()  # recorded, not run: no state changes if the capture fails
        except RuntimeError as e:  # something in the step cannot be captured: run it eagerly instead
            self.failure = f"{type(e).__name__}: {e}".splitlines()[0]
            warnings.warn(f"decode: the CUDA-graph capture failed ({self.failure}); decoding eagerly", stacklevel=2)
            return WARMUP_STEPS
        self.graph = graph
        return WARMUP_STEPS

    def replay(self) -> None:
        """Take one step (the captured kernels, on the current stream)."""
        if self.graph is None:
            self.step()
        else:
            self.graph.replay()
