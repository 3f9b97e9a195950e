"""Seeding and capture/restore of random-number-generator state (python, torch CPU, CUDA).

numpy's global generator is not touched: XT code draws randomness from torch or from its own
seeded generators (e.g. the data loader's shuffle, which lives in the loader state).
"""
from __future__ import annotations

import random
from typing import Any

import torch

__all__ = ["seed_everything", "get_rng_state", "set_rng_state"]


def seed_everything(seed: int) -> None:
    """Seed python `random` and torch (CPU and every CUDA device) with `seed`."""
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds all CUDA devices (lazily if CUDA is not initialised)


def get_rng_state() -> dict[str, Any]:
    """This process's RNG states.

    Returns:
        ``{"python": random.getstate(), "torch": ByteTensor, "cuda": list[ByteTensor] | None}``
        (``cuda`` is None when CUDA is not initialised in this process).
    """
    cuda = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = torch.cuda.get_rng_state_all()
    return {"python": random.getstate(), "torch": torch.get_rng_state(), "cuda": cuda}


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by `get_rng_state`.

    Raises:
        ValueError: if the state has CUDA generators but this process sees fewer CUDA devices.
    """
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None:
        if torch.cuda.device_count() < len(cuda):
            raise ValueError(f"checkpoint has RNG state for {len(cuda)} CUDA devices, this "
                             f"process sees {torch.cuda.device_count()}")
        torch.cuda.set_rng_state_all(cuda)
