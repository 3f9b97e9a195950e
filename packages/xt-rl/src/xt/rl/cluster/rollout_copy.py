"""The rollout copy of a colocated trainer rank (``placement = "colocated"``, ``trainer_workers > 1``).

A policy laid out by ``[parallel]`` over several trainer ranks (FSDP2 shards, EP expert slices)
cannot generate on its own: each rank holds only its shards, and a sharded forward is collective
(every rank would have to run the same decode steps in lockstep). So each rank keeps a full,
unsharded plain copy of the model on its own device, generates its share of the step's prompts on
it between updates, and refreshes it in memory after each update:

- `build_rollout_copy`: the model of ``cfg.model`` built on meta (`xt.models.run_model_source`)
  and materialised on the rank's device, plain (no layout); its weights are placeholders (seeded
  init, under a forked RNG so the trainer's RNG stream is untouched) until the first refresh.
- `refresh_copy`: the policy's full state streamed one tensor at a time
  (`xt.parallel.full_state.FullState`: FSDP2 all-gathers and EP all-gathers, every rank in step,
  each getting every tensor, on its own device) and copied into the copy by its XT name
  (`xt.rl.cluster.weights.copy_bucket`, as rollout actors copy by HF name); every tensor of the
  copy must arrive. Writes are in place, so compute copies over the copy (bf16,
  `xt.rl.rollout.precision.copy_precision`) re-cast before the next generation.

Memory per rank: the copy's full fp32 weights (4 bytes x parameters; plus 2 bytes x matmul
parameters of bf16 compute copies with ``rollout.dtype = "train"`` resolving to bf16 and
``train.weight_cast = "per_step"``) on top of the rank's shards of the policy, its gradients and
optimizer state; one gathered tensor at a time during a refresh.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from xt.models import run_model_source
from xt.parallel.materialize import materialize_
from xt.rl.cluster.weights import check_arrived, copy_bucket

__all__ = ["build_rollout_copy", "refresh_copy"]


def build_rollout_copy(model_section: Any, device: torch.device) -> nn.Module:
    """A plain, unsharded model of `model_section` on `device`, frozen, with placeholder weights
    (module docstring); `refresh_copy` gives it the policy's. The global RNG state (CPU and
    `device`) is the same afterwards as before.

    Raises:
        what `xt.models.run_model_source` and `xt.parallel.materialize.materialize_` raise (bad
        model fields, a model without init rules).
    """
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        model, _ = run_model_source(model_section, device)  # an init_from folder is not read: refreshed instead
        materialize_(model, device)
    return model.requires_grad_(False)


def refresh_copy(copy: nn.Module, tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
    """Copy the policy's full state `tensors` (``(xt_name, full tensor)``, e.g. a `FullState`,
    iterated on every trainer rank in step) into the plain `copy` by name, in place; returns the
    bytes copied.

    Raises:
        KeyError: a name the copy lacks, or a tensor of the copy that never arrived.
        RuntimeError: a shape that differs (from ``copy_``).
    """
    targets = copy.state_dict()  # detached views of the copy's own tensors: copy_ writes the model
    seen: set[str] = set()
    n = copy_bucket(targets, tensors, seen)
    check_arrived(targets, seen)
    return n
