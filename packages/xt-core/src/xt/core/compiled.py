"""``torch.compile`` for small hot-path functions on CUDA: eager everywhere else, and eager from
then on (with one warning) where compilation fails.

Used for the elementwise and reduction glue between the big kernels (RMSNorm with its residual
add, RoPE): eagerly each of those is several kernels over ``[T, D]`` float32 tensors, compiled it is
one fused Triton kernel forward and one or two backward. The token dimension is marked dynamic, so
a run compiles each function once per hidden size, not once per micro-batch length.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
import torch.utils.checkpoint

__all__ = ["CudaCompiled"]

# Non-reentrant activation checkpointing stops a recompute early by raising this from its pack
# hook, i.e. from inside whatever op runs next -- possibly inside a compiled call. It is control
# flow, not a compile failure: catching it breaks the recompute (torch then asserts
# "target_frame.early_stop is set"), as DeepSeek-V3's MTP block with AC did on the H200.
_CHECKPOINT_CONTROL = tuple(c for c in (getattr(torch.utils.checkpoint, "_StopRecomputationError", None),)
                            if isinstance(c, type))


def _mark_token_dim(t: torch.Tensor) -> None:
    mark = getattr(torch._dynamo.decorators, "mark_unbacked", None)
    if mark is None:
        torch._dynamo.maybe_mark_dynamic(t, 0)
    else:
        mark(t, 0)


class CudaCompiled:
    """``fn`` compiled (``torch.compile(fn, fullgraph=True)``) when its first argument is a CUDA tensor.

    Args:
        fn: a pure tensor function (no Python side effects, no data-dependent control flow).
        name: how warnings name it.
        dynamic_args: positions of the arguments whose dimension 0 (the token dimension) varies
            between calls; they are marked unbacked (``torch._dynamo.decorators.mark_unbacked``;
            ``maybe_mark_dynamic`` where that is missing) so one graph serves every length. Merely
            dynamic sizes let Inductor guard on size ranges (``2 <= T <= 2559``, ``T >= 4096``) and
            compile again, fwd + bwd, when a micro-batch of a new range arrives: a 2.4x step long
            after warm-up on the H200 (``TORCH_LOGS=recompiles``); unbacked sizes admit no guards.

    Calling it returns ``fn(*args)``'s value. CPU tensors, and every call after compilation failed,
    run ``fn`` eagerly (same math; Inductor may round reductions differently in the last bit).
    """

    def __init__(self, fn: Callable, name: str, dynamic_args: Sequence[int] = (0,)) -> None:
        self.fn = fn
        self.name = name
        self.dynamic_args = tuple(dynamic_args)
        self._compiled: Callable | None = None
        self._broken = False

    def __call__(self, *args):
        if self._broken or not (isinstance(args[0], torch.Tensor) and args[0].is_cuda):
            return self.fn(*args)
        return self._call_compiled(args)

    def _call_compiled(self, args: tuple):
        """``fn(*args)`` through the compiled function (compiled on first use); eager from then on
        when compilation fails, except for activation checkpointing's early-stop signal, re-raised."""
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, fullgraph=True)
        for i in self.dynamic_args:
            a = args[i]
            if isinstance(a, torch.Tensor) and a.dim() > 0:
                _mark_token_dim(a)
        try:
            return self._compiled(*args)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - no compiler / an Inductor limitation: eager is correct
            if _CHECKPOINT_CONTROL and isinstance(e, _CHECKPOINT_CONTROL):
                raise
            self._broken = True
            warnings.warn(f"{self.name}: torch.compile failed ({type(e).__name__}: {str(e)[:200]}); "
                          "running it eagerly from now on", RuntimeWarning, stacklevel=2)
            return self.fn(*args)
