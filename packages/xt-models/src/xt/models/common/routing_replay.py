"""MoE routing record and replay, applied to a model from outside.

Shape legend: L MoE layers of the decoder (in execution order), T tokens of one forward, K top-k.

Every XT router (`~xt.models.common.router.TopKRouter`, DeepSeek-V3's ``SigmoidGroupRouter``,
GPT-OSS's router) has one seam, the attribute ``replay_topk_ids``: while it holds ``[T, K]`` expert
ids, the router uses them instead of its own top-k and computes the combine weights from its live
logits at those experts, so gradients still reach the router weight. This module drives that seam;
the models know nothing of where the ids come from:

- :func:`record_routing`: a context manager that records every router call's ``topk_ids`` (forward
  hooks), e.g. during generation;
- :func:`replay_routing`: a context manager that fixes the experts of one forward to a recorded
  ``routed_experts [L, T, K]``;
- :func:`enable_routing_replay`: a forward pre-hook on the model that takes ``routed_experts=`` as a
  keyword of each call (so a training batch can carry it through an engine) and sets or clears the
  routers' ids for that call. The ids stay set until the next call of the model, so an
  activation-checkpointed layer recomputed in backward routes like its forward.

Why: a policy trained on samples from a rollout engine should be scored on the experts the rollout
used; otherwise a tiny numerical difference flips a top-k choice and the trainer's log-probability
of a token comes from another expert (the "routing replay" of RL for MoE models).
"""
from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["decoder_routers", "RoutingRecord", "record_routing", "replay_routing", "enable_routing_replay",
           "ReplayHook", "set_replay_ids"]


def _is_router(module: nn.Module) -> bool:
    return hasattr(type(module), "replay_topk_ids")


def decoder_routers(model: nn.Module) -> list[nn.Module]:
    """The routers of `model`'s decoder layers in execution order (L of them; none for a dense model).

    Uses ``model.parallel_plan()`` where the family has one (its ``moe_blocks``, without the
    multi-token-prediction layers, which generation does not run); otherwise every module whose class
    has the ``replay_topk_ids`` seam, in registration order.
    """
    plan_fn = getattr(model, "parallel_plan", None)
    if callable(plan_fn):
        plan = plan_fn()
        main = plan["decoder_layers"][:len(plan["decoder_layers"]) - plan.get("mtp_layers", 0)]
        routers = [model.get_submodule(b["router"]) for b in plan["moe_blocks"]
                   if any(b["block"].startswith(layer + ".") for layer in main)]
        return [r for r in routers if _is_router(r)]
    return [m for m in model.modules() if _is_router(m)]


class RoutingRecord:
    """What :func:`record_routing` collected: per router, the ``topk_ids [T_call, K]`` int64 (CPU, or
    the model's device with ``keep_on_device``) of each of its calls, in call order (``calls[l][c]``)."""

    def __init__(self, num_routers: int) -> None:
        self.calls: list[list[torch.Tensor]] = [[] for _ in range(num_routers)]

    @property
    def num_calls(self) -> int:
        """Forward calls recorded (those of the first router)."""
        return len(self.calls[0]) if self.calls else 0

    def call(self, c: int) -> torch.Tensor:
        """``[L, T_call, K]`` int64: every router's choice in call `c`."""
        return torch.stack([per_router[c] for per_router in self.calls])


@contextmanager
def record_routing(model: nn.Module, keep_on_device: bool = False) -> Iterator[RoutingRecord]:
    """Record the experts every decoder router of `model` picks while the context is open.

    Args:
        model: the model whose decoder routers are hooked.
        keep_on_device: keep each call's ``topk_ids`` where the router computed them (no host
            read per router call, which on a GPU would stall the host once per layer and step); the
            caller moves them. Default: copied to the CPU as they come.

    Yields:
        a :class:`RoutingRecord` (filled as the model runs; hooks removed on exit, also on error).
    """
    routers = decoder_routers(model)
    rec = RoutingRecord(len(routers))
    move = (lambda t: t.detach()) if keep_on_device else (lambda t: t.detach().cpu())
    handles = [r.register_forward_hook(lambda m, args, out, l=l: rec.calls[l].append(move(out.topk_ids)))
               for l, r in enumerate(routers)]
    try:
        yield rec
    finally:
        for h in handles:
            h.remove()


def set_replay_ids(routers: list[nn.Module], routed_experts: torch.Tensor | None) -> None:
    """Give router l the ids ``routed_experts[l] [T, K]`` (or clear them all with None).

    Raises:
        ValueError: ``routed_experts`` is not ``[L, T, K]`` with L = ``len(routers)``.
    """
    if routed_experts is None:
        for r in routers:
            r.replay_topk_ids = None
        return
    if routed_experts.ndim != 3 or routed_experts.shape[0] != len(routers):
        raise ValueError(f"routing replay: routed_experts must be [layers={len(routers)}, T, top_k]; got "
                         f"{tuple(routed_experts.shape)}")
    for r, ids in zip(routers, routed_experts):
        r.replay_topk_ids = ids


@contextmanager
def replay_routing(model: nn.Module, routed_experts: torch.Tensor) -> Iterator[None]:
    """Route every forward of `model` inside the context with the recorded ``routed_experts [L, T, K]``
    (integer ids); the routers' own choice is restored on exit (also on error).

    Raises:
        ValueError: a shape that does not fit the model's L routers (or, in the forward, its T and K).
    """
    routers = decoder_routers(model)
    set_replay_ids(routers, routed_experts)
    try:
        yield
    finally:
        set_replay_ids(routers, None)


class ReplayHook:
    """The handle :func:`enable_routing_replay` returns; `remove` takes the hook off and clears the routers."""

    def __init__(self, handle: RemovableHandle, routers: list[nn.Module]) -> None:
        self._handle, self._routers = handle, routers

    def remove(self) -> None:
        """Remove the pre-hook and clear every router's replay ids."""
        self._handle.remove()
        set_replay_ids(self._routers, None)


def enable_routing_replay(model: nn.Module) -> ReplayHook:
    """Let every call of `model` take a keyword ``routed_experts`` (``[L, T, K]`` ids, or None).

    The keyword is removed before the model's own forward sees it; with ids the routers replay
    them for that call, without (or with None) they route themselves.

    Returns:
        a :class:`ReplayHook` (``remove()`` undoes this).
    """
    routers = decoder_routers(model)

    def hook(module, args, kwargs):
        set_replay_ids(routers, kwargs.pop("routed_experts", None))
        return args, kwargs

    return ReplayHook(model.register_forward_pre_hook(hook, with_kwargs=True), routers)
