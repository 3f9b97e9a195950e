"""AdamW whose step also re-casts the bf16 compute copies (``optim.impl = "fused_bf16_refresh"``).

Under ``train.weight_cast = "per_step"`` (`xt.core.engine.compute_weights`) each step of a
mixed-precision run reads and writes every fp32 master several times after the backward: the clip
multiplies every gradient, torch's fused AdamW reads param / grad / exp_avg / exp_avg_sq and writes
three of them, and the refresh reads every master again to write its bf16 copy. `AdamWRefresh`
does one pass: the clip factor divides the gradient as it is read (``grad_scale``, the engine's
`clip_divisor`), and the updated parameter is written to the master and, rounded, to its copy
(``param.to(bf16)``, the same round-to-nearest-even cast as the refresh). The Triton kernel
(`xt.kernels.optim.adamw_triton`) runs on CUDA and under ``TRITON_INTERPRET=1``; elsewhere a
per-tensor torch formula (`adamw_reference_`) does the same arithmetic.

The update is torch.optim.AdamW's (decoupled weight decay; Loshchilov & Hutter 2019, Kingma &
Ba 2015), without amsgrad / maximize. The state has torch's keys (``step`` as a float32 CPU
scalar, ``exp_avg``, ``exp_avg_sq``), so checkpoints move between this and torch's AdamW. Unlike
torch's fused step with ``grad_scale``, the unscaled gradient is not written back (the engine
drops the gradients after the step).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from xt.kernels._triton_support import triton_usable_on

__all__ = ["AdamWRefresh", "adamw_reference_"]

BACKENDS = ("auto", "triton", "torch")


def adamw_reference_(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                     copy: torch.Tensor | None, *, lr: float, weight_decay: float, beta1: float, beta2: float,
                     eps: float, step: int, scale: torch.Tensor | None = None) -> None:
    """One AdamW step of one tensor in place, in the parameter's dtype, and its copy re-cast.

    ``g = grad / scale``; ``p *= 1 - lr·wd``; ``m = β1·m + (1-β1)·g``; ``v = β2·v + (1-β2)·g²``;
    ``p -= (lr / (1-β1^t)) · m / (sqrt(v) / sqrt(1-β2^t) + eps)``; ``copy = p.to(copy.dtype)``.

    Args:
        param, exp_avg, exp_avg_sq: same shape and dtype (float32 or float64).
        grad: same shape, any float dtype (cast to the parameter's).
        copy: a 16-bit tensor of the same shape, or None.
        step: the step number t >= 1 (after this update).
        scale: a scalar tensor dividing the gradient (the clip factor), or None.
    """
    g = grad.to(param.dtype)
    if scale is not None:
        g = g / scale.to(param.dtype)
    param.mul_(1.0 - lr * weight_decay)
    exp_avg.mul_(beta1).add_(g, alpha=1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1.0 - beta2 ** step)).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-(lr / (1.0 - beta1 ** step)))
    if copy is not None:
        copy.copy_(param)


class AdamWRefresh(torch.optim.Optimizer):
    """AdamW (torch's update and state keys) that writes the compute copies in the same pass.

    Args:
        params: parameters or groups, as for torch.optim.AdamW (plain tensors, not DTensors).
        lr, betas, eps, weight_decay: as torch.optim.AdamW.
        backend: "auto" (Triton where it can run: CUDA, or CPU under ``TRITON_INTERPRET=1``; else
            torch), "triton" or "torch" (`adamw_reference_` per tensor).

    Attributes:
        grad_scale: set by the caller for one step (a float32 scalar tensor on the device): every
            gradient is divided by it (the engine's clip; ``xt_takes_grad_scale``).

    Raises:
        ValueError: a DTensor parameter, a non-float parameter, a bad hyper-parameter or backend.
    """

    xt_takes_grad_scale = True

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"AdamWRefresh: backend must be one of {list(BACKENDS)}, got {backend!r}")
        if not (lr >= 0 and eps >= 0 and weight_decay >= 0 and all(0 <= b < 1 for b in betas)):
            raise ValueError(f"AdamWRefresh: need lr, eps, weight_decay >= 0 and betas in [0, 1), got "
                             f"lr={lr}, eps={eps}, weight_decay={weight_decay}, betas={betas}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=False,
                        maximize=False)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if type(p.data) is not torch.Tensor:
                    raise ValueError("AdamWRefresh: DTensor (FSDP2 / TP) parameters are not supported; "
                                     "use optim.impl = 'fused'")
                if p.dtype not in (torch.float32, torch.float64):
                    raise ValueError(f"AdamWRefresh: parameters must be float32 or float64, got {p.dtype}")
        self.backend = backend
        self._copies: dict[int, torch.Tensor] = {}
        self._blocks: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def attach_compute_copies(self, pairs: Sequence[tuple[nn.Parameter, torch.Tensor]]) -> None:
        """Write ``copy`` (``master.to(copy.dtype)``) whenever ``master`` is updated.

        Args:
            pairs: ``(fp32 master, 16-bit copy)`` of the same shape (`ComputeWeights.pairs`).

        Raises:
            ValueError: shapes differ, a master is not float32, or a copy is not a contiguous
                16-bit tensor.
        """
        for master, copy in pairs:
            if copy.shape != master.shape or copy.dtype not in (torch.bfloat16, torch.float16) \
                    or not copy.is_contiguous() or master.dtype != torch.float32:
                raise ValueError(f"AdamWRefresh.attach_compute_copies: copy {tuple(copy.shape)} {copy.dtype} "
                                 f"does not fit master {tuple(master.shape)}")
        self._copies = {id(m): c for m, c in pairs}

    @property
    def refreshes_copies(self) -> bool:
        """Whether compute copies are attached (the caller then need not re-cast them)."""
        return bool(self._copies)

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        elif state["step"].device.type != "cpu":  # e.g. loaded from torch's fused AdamW state
            state["step"] = state["step"].detach().float().cpu()
        return state

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient (and of its compute copy).

        Raises:
            RuntimeError: ``found_inf`` is set or a gradient is sparse (not supported), or the
                "triton" backend cannot run here.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if getattr(self, "found_inf", None) is not None:
            raise RuntimeError("AdamWRefresh: found_inf is not supported")
        scale = getattr(self, "grad_scale", None)
        jobs: dict[tuple, list] = {}
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, wd, eps = float(group["lr"]), float(group["weight_decay"]), float(group["eps"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamWRefresh: sparse gradients are not supported")
                state = self._state(p)
                state["step"] += 1
                t = int(state["step"].item())  # a CPU tensor: no device synchronisation
                copy = self._copies.get(id(p))
                row = (1.0 - lr * wd, beta1, beta2, eps, lr / (1.0 - beta1 ** t), math.sqrt(1.0 - beta2 ** t))
                item = (p, p.grad, state["exp_avg"], state["exp_avg_sq"], copy, row, (lr, wd, beta1, beta2, eps, t))
                key = (p.device, p.dtype, p.grad.dtype, None if copy is None else copy.dtype)
                jobs.setdefault(key, []).append(item)
        for (device, *_), items in jobs.items():
            if self._use_triton(device, items):
                self._launch(device, items, scale)
            else:
                for p, g, m, v, c, _, (lr, wd, beta1, beta2, eps, t) in items:
                    adamw_reference_(p, g, m, v, c, lr=lr, weight_decay=wd, beta1=beta1, beta2=beta2, eps=eps,
                                     step=t, scale=scale)
        return loss

    def _use_triton(self, device: torch.device, items: list) -> bool:
        if self.backend == "torch":
            return False
        usable = triton_usable_on(device) and all(
            t.is_contiguous() for it in items for t in it[:4] + ((it[4],) if it[4] is not None else ()))
        if self.backend == "triton" and not usable:
            raise RuntimeError(f"AdamWRefresh: backend 'triton' cannot run on {device} here (needs CUDA, or "
                               "TRITON_INTERPRET=1 on the CPU, and contiguous tensors)")
        return usable

    def _launch(self, device: torch.device, items: list, scale: torch.Tensor | None) -> None:
        from xt.kernels.optim.adamw_triton import adamw_launch, block_table
        numels = tuple(it[0].numel() for it in items)
        key = (device, numels)
        if key not in self._blocks:
            if len(self._blocks) >= 8:  # the set of parameters with gradients keeps changing
                self._blocks.clear()
            self._blocks[key] = block_table(numels, device)
        pinned = device.type == "cuda"
        scalars = torch.tensor([it[5] + (float(n),) for it, n in zip(items, numels)], dtype=torch.float64,
                               pin_memory=pinned).to(device, non_blocking=True)
        if scale is not None:
            scale = scale.to(device=device, dtype=torch.float32)
        params, grads, ms, vs, copies = (list(col) for col in zip(*(it[:5] for it in items)))
        adamw_launch(params, grads, ms, vs, None if copies[0] is None else copies, scalars,
                     self._blocks[key], scale)
        for p in params:  # the kernel wrote them in place: let version-counter users see it
            torch.autograd.graph.increment_version(p)
