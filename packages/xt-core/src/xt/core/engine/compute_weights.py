"""bf16 compute copies of fp32 master weights, cast once per optimizer step (``train.weight_cast``).

Under ``torch.autocast`` alone (``weight_cast = "per_use"``) every matmul casts its fp32 weight to
bf16 in every micro-batch, and the backward casts each weight gradient back to fp32 before it is
added into ``.grad``: three full passes over every weight per micro-batch (on a 5.6B-parameter
Qwen3-MoE at 16 micro-batches per step, 41% of an H200 step went to those casts and adds).

``weight_cast = "per_step"`` keeps the fp32 parameters, their ``.grad`` and the optimizer exactly
as they are, and adds a bf16 copy of each eligible weight. During `swapped` the module holds the
copy in place of the master, so autocast finds bf16 already and casts nothing; each copy's bf16
gradient is added into the master's fp32 ``.grad`` by a post-accumulate-grad hook as soon as
autograd has it, and the bf16 gradient is freed. `refresh` re-casts the copies after the
optimizer changed the masters. The bf16 values the matmuls see are the ones autocast would have
made (the same round-to-nearest cast), the fp32 accumulation order is the same, and clipping and
AdamW still run on fp32 masters; what changes is the number of casts (once per step instead of
once per use). Megatron-LM's mixed precision (bf16 model weights, fp32 ``main_grad`` and fp32
master weights in the optimizer) is the same idea from the other side.

Eligible: floating parameters with ``ndim >= 2`` that are plain tensors (FSDP2's DTensor
parameters are cast by FSDP's own ``MixedPrecisionPolicy``), except
- embedding tables (autocast never casts an embedding lookup, so the residual stream stays fp32
  as without copies);
- biases (a parameter whose name ends in ``bias``, e.g. GPT-OSS's per-expert ``[E, F]`` biases):
  they are added, not multiplied, and their gradient is a sum over tokens that must accumulate in
  fp32, which a bf16 leaf would not do;
- the parameters of modules with a true ``xt_fp32_weights`` attribute (routers, which compute in
  fp32 with autocast off; docs/contracts.md, Model).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ComputeWeights", "eligible_parameters", "grad_master"]


def _is_plain(p: torch.Tensor) -> bool:
    # DTensor subclasses torch.Tensor; FSDP2/TP parameters are DTensors (checked without importing
    # torch.distributed, which some CPU builds lack)
    return type(p.data) is torch.Tensor


def eligible_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of `model` that `ComputeWeights` copies (module docstring), each once.

    Args:
        model: any module.

    Returns:
        fp32 parameters with ``ndim >= 2``, plain tensors, not biases, not owned by an
        ``nn.Embedding`` or a module with ``xt_fp32_weights = True``, in ``model.parameters()``
        order.
    """
    excluded: set[int] = set()
    for m in model.modules():
        if isinstance(m, nn.Embedding) or getattr(m, "xt_fp32_weights", False):
            excluded.update(id(p) for p in m.parameters(recurse=False))
    excluded.update(id(p) for name, p in model.named_parameters(remove_duplicate=False)
                    if name.rsplit(".", 1)[-1].endswith("bias"))
    return [p for p in model.parameters()
            if p.dtype == torch.float32 and p.ndim >= 2 and _is_plain(p) and id(p) not in excluded]


@dataclass
class _Slot:
    module: nn.Module
    name: str
    master: nn.Parameter
    copy: nn.Parameter


class ComputeWeights:
    """Low-precision compute copies of a model's fp32 weights (module docstring).

    Usage: ``with weights.swapped(): forward and backward``, then clip and step the optimizer on
    the masters, then `refresh` (or let the next `swapped` find the changed masters itself).

    Args:
        model: the model (its parameters fp32, on their device).
        dtype: the compute dtype of the copies (torch.bfloat16 or torch.float16).

    Attributes:
        num_params: elements copied (for the banner).
        num_tensors: parameters copied.

    Raises:
        ValueError: `dtype` is not a 16-bit floating dtype.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        if dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"ComputeWeights: dtype must be torch.bfloat16 or torch.float16, got {dtype}")
        self.dtype = dtype
        chosen = {id(p) for p in eligible_parameters(model)}
        copies: dict[int, nn.Parameter] = {}
        self._slots: list[_Slot] = []
        for module in model.modules():  # tied weights: one copy, swapped into every owner
            for name, p in module._parameters.items():
                if p is None or id(p) not in chosen:
                    continue
                if id(p) not in copies:
                    copies[id(p)] = self._make_copy(p)
                self._slots.append(_Slot(module, name, p, copies[id(p)]))
        self._pairs = [(p, copies[i]) for i, p in
                       {id(s.master): s.master for s in self._slots}.items()]
        self._versions: list[int] = []
        self.num_tensors = len(self._pairs)
        self.num_params = sum(m.numel() for m, _ in self._pairs)
        self._active = False
        self.refresh()

    def _make_copy(self, master: nn.Parameter) -> nn.Parameter:
        copy = nn.Parameter(torch.empty_like(master, dtype=self.dtype), requires_grad=master.requires_grad)
        if master.requires_grad:
            copy.register_post_accumulate_grad_hook(_accumulate_into(master))
            copy._xt_grad_master = master  # for kernels that accumulate into it themselves: grad_master
        return copy

    def refresh(self) -> None:
        """Re-cast every copy from its master (after the optimizer step or a checkpoint load)."""
        if not self._pairs:
            return
        with torch.no_grad():
            torch._foreach_copy_([c for _, c in self._pairs], [m.detach() for m, _ in self._pairs])
        self._versions = [m._version for m, _ in self._pairs]

    @property
    def pairs(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """``(fp32 master, 16-bit copy)`` of every copied weight, each once (tied weights once)."""
        return list(self._pairs)

    def mark_fresh(self) -> None:
        """Record that every copy equals its master's cast now, without re-casting (an optimizer
        that writes the copies in its own step, `xt.kernels.optim.AdamWRefresh`, did it)."""
        self._versions = [m._version for m, _ in self._pairs]

    def _stale(self) -> bool:
        # in-place writes to a parameter (optimizer step, load_state_dict, copy_) bump its
        # version counter; writes through `.data` do not, so callers doing that call refresh()
        return any(m._version != v for (m, _), v in zip(self._pairs, self._versions))

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Hold the copies in the model instead of the masters for the duration of the block.

        Re-casts the copies first if any master changed since the last `refresh`. Gradients
        reaching a copy are added into ``master.grad`` (fp32; allocated on first use) and the
        copy's own ``.grad`` is cleared. On exit (also on an exception) the masters are back.

        Raises:
            RuntimeError: on re-entry (the block is already active).
        """
        if self._active:
            raise RuntimeError("ComputeWeights.swapped() is already active")
        if self._stale():
            self.refresh()
        self._active = True
        try:
            for s in self._slots:
                s.module._parameters[s.name] = s.copy
            yield
        finally:
            for s in self._slots:
                s.module._parameters[s.name] = s.master
            self._active = False


def _flat_add_(acc: torch.Tensor, g: torch.Tensor) -> None:
    acc.add_(g)


class _CompiledAdd:
    """``acc += g`` for an fp32 ``acc`` and a bf16/fp16 ``g`` of the same shape.

    Eager ``fp32 += bf16`` takes TensorIterator's non-vectorised mixed-dtype path: on an H200 it
    moved ~2.3 TB/s, 0.35 s of a 1.7 s step at 16 micro-batches
    (benchmarks/results/train-profile-4k_x16-weight-cast-2026-12-01.txt). On CUDA one kernel
    compiled over flat views, dynamic in the length, serves every parameter size; where
    compilation fails (no Triton, no compiler) the eager op is used from then on (correct, slower).
    """

    def __init__(self) -> None:
        self._fn: Callable[[torch.Tensor, torch.Tensor], None] | None = None
        self._broken = False

    def __call__(self, acc: torch.Tensor, g: torch.Tensor) -> None:
        if self._broken or not (acc.is_cuda and acc.is_contiguous() and g.is_contiguous()):
            acc.add_(g)
            return
        try:
            if self._fn is None:
                self._fn = torch.compile(_flat_add_, dynamic=True, fullgraph=True)
            self._fn(acc.view(-1), g.view(-1))
        except Exception:  # noqa: BLE001 - see the class docstring
            self._broken = True
            acc.add_(g)


_add_into = _CompiledAdd()


def grad_master(weight: torch.Tensor) -> nn.Parameter | None:
    """The fp32 master whose ``.grad`` receives `weight`'s gradient, when `weight` is a
    `ComputeWeights` copy; None for any other tensor.

    A kernel's backward may add its float32 weight gradient into ``grad_master(w).grad`` itself
    (when that ``.grad`` exists: from the second micro-batch of a step on) and return None for
    ``w``: the same sum as returning the 16-bit gradient for the hook to add, without writing and
    re-reading it, and without its rounding to 16 bits (Megatron-LM's "gradient accumulation
    fusion" into ``main_grad``). `xt.kernels.moe.swiglu_experts` does this for the expert weights,
    `xt.kernels.linear` for bias-free dense layers and the fused loss for the LM head.
    """
    return getattr(weight, "_xt_grad_master", None)


def _accumulate_into(master: nn.Parameter):
    def hook(copy: torch.Tensor) -> None:
        g, copy.grad = copy.grad, None
        if g is None:  # every use of the copy added its gradient into master.grad itself
            return
        if master.grad is None:
            master.grad = g.to(master.dtype)
        else:  # fp32 += bf16 (promoted elementwise): exact like autocast's cast-then-add
            _add_into(master.grad, g)
    return hook
