"""Backend registry of the kernel ops: which implementation runs each op.

Ops: ``"grouped_gemm"``, ``"permute"``, ``"unpermute"``, ``"loss"`` (the fused linear
cross-entropy), ``"log_probs"`` (the fused per-token log-probabilities / entropy), ``"rms_norm"``
and ``"rope"`` (the glue ops of :mod:`xt.kernels.norm`). Backend names: ``"auto"``, ``"triton"``, ``"torch"``, ``"reference"``, ``"npu"``
(what each means per op: :mod:`xt.kernels.moe.backends` and docs/architecture.md, Kernels and
backends).

This module only holds names and choices. Each op module registers its own implementations when
it is imported (:func:`register`: ``xt.kernels.moe.grouped_gemm``, ``xt.kernels.moe.permute``,
``xt.kernels.loss.linear_ce``) and imports this module, never the other way round, so the registry
sits below every op in the import graph. Calling an op through its public function
(``grouped_gemm``, ``permute``, ``linear_cross_entropy``, ...) always finds it registered.
"""
from __future__ import annotations

from typing import Callable

__all__ = ["OPS", "BACKENDS", "register", "set_backend", "get_backend", "dispatch"]

OPS = ("grouped_gemm", "permute", "unpermute", "loss", "log_probs", "rms_norm", "rope")
BACKENDS = ("auto", "triton", "torch", "reference", "npu")
#: the module that registers each op (named in the error when it has not been imported yet)
_HOME = {"grouped_gemm": "xt.kernels.moe.grouped_gemm", "permute": "xt.kernels.moe.permute",
         "unpermute": "xt.kernels.moe.permute", "loss": "xt.kernels.loss.linear_ce",
         "log_probs": "xt.kernels.loss.log_probs", "rms_norm": "xt.kernels.norm", "rope": "xt.kernels.norm"}
_selected: dict[str, str] = {op: "auto" for op in OPS}
_factories: dict[str, Callable[[str], Callable]] = {}


def _check(op: str, name: str) -> None:
    if op not in OPS:
        raise ValueError(f"kernels: unknown op {op!r}; expected one of {OPS}")
    if name not in BACKENDS:
        raise ValueError(f"kernels.{op}: unknown backend {name!r}; expected one of {BACKENDS}")


def register(op: str, factory: Callable[[str], Callable]) -> None:
    """Make ``factory(backend_name) -> callable`` the implementation source of ``op``.

    Called once by the module that implements ``op``, at import. Registering again replaces the
    factory (a module re-imported in a test).

    Raises:
        ValueError: unknown op.
    """
    _check(op, "auto")
    _factories[op] = factory


def set_backend(op: str, name: str) -> None:
    """Set the process-wide backend of ``op`` (``"permute"`` sets ``"unpermute"`` too, ``"loss"``
    sets ``"log_probs"`` too).

    Raises:
        ValueError: unknown op or backend name.
    """
    _check(op, name)
    _selected[op] = name
    if op == "permute":
        _selected["unpermute"] = name
    if op == "loss":
        _selected["log_probs"] = name


def get_backend(op: str) -> str:
    """The process-wide backend name of ``op`` (``"auto"`` unless set).

    Raises:
        ValueError: unknown op.
    """
    _check(op, "auto")
    return _selected[op]


def dispatch(op: str, backend: str | None = None) -> Callable:
    """The callable implementing ``op`` with ``backend`` (``None``: the process-wide choice).

    Signatures: grouped_gemm ``(x, w, tokens_per_expert, trans_b=False)``; permute
    ``(x, topk_ids, num_experts)``; unpermute ``(y_sorted, info, topk_weights)``; loss as
    :func:`xt.kernels.loss.linear_cross_entropy` without ``backend``; log_probs as
    :func:`xt.kernels.loss.linear_log_probs` without ``backend``.

    Raises:
        ValueError: unknown op or backend name.
        LookupError: the module implementing ``op`` has not been imported (names it).
    """
    name = backend or _selected.get(op, "auto")
    _check(op, name)
    factory = _factories.get(op)
    if factory is None:
        raise LookupError(f"kernels: no implementation of {op!r} is registered; import {_HOME[op]} first")
    return factory(name)
