"""When the training loop stops early or checkpoints: signals (SIGINT/SIGTERM), a time budget and
a checkpoint cadence in minutes, decided the same way on every rank.

`StopWatch` is a context manager around `Trainer.fit`'s loop. On the main thread it catches the
first SIGINT or SIGTERM and only records it, so the step under way finishes; the loop then saves a
checkpoint and stops (a preemption-safe run). A second signal of the same kind while the first is
being handled raises `KeyboardInterrupt` at once (abandon the step; the last finished checkpoint
stays the latest). After each optimizer step `poll` reduces this rank's flags over all ranks
(`DistContext.all_reduce_sum`, one small tensor), so every rank takes the same decision even when
only one of them received the signal or crossed a deadline first.
"""
from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

import torch

from xt.core.distributed import DistContext

__all__ = ["StopWatch", "StopDecision"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class StopDecision:
    """What the loop does after a step (the same on every rank).

    Attributes:
        signal: name of the signal that asks the run to stop (``"SIGINT"`` / ``"SIGTERM"``), or None.
        out_of_time: the time budget (``train.max_minutes``) is spent.
        checkpoint_due: ``checkpoint.every_minutes`` have passed since the last checkpoint.
    """

    signal: str | None = None
    out_of_time: bool = False
    checkpoint_due: bool = False

    @property
    def stop(self) -> bool:
        """True when the loop must end after this step (a signal or the time budget)."""
        return self.signal is not None or self.out_of_time


class StopWatch:
    """Signal capture and wall-clock deadlines for one training loop (module docstring).

    Args:
        max_minutes: stop after this many minutes of the loop (None = no budget).
        every_minutes: a checkpoint is due this many minutes after the last one (0 or None = never).
        catch_signals: install the SIGINT/SIGTERM handlers (only possible on the main thread;
            elsewhere the signals keep their handlers and this is a no-op).
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, max_minutes: float | None = None, every_minutes: float | None = None,
                 catch_signals: bool = True, clock: Any = time.monotonic) -> None:
        self.max_s = None if max_minutes is None else 60.0 * max_minutes
        self.every_s = 60.0 * every_minutes if every_minutes else None
        self.catch = catch_signals
        self.clock = clock
        self.received: int | None = None
        self._old: dict[int, Any] = {}
        self._start = self._last_ckpt = clock()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received == signum:  # asked twice: abandon the step now
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> StopWatch:
        self._start = self._last_ckpt = self.clock()
        if self.catch and threading.current_thread() is threading.main_thread():
            for s in _SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}

    def checkpointed(self) -> None:
        """Note that a checkpoint was just saved (restarts the `every_minutes` clock)."""
        self._last_ckpt = self.clock()

    def poll(self, dist: DistContext, device: torch.device) -> StopDecision:
        """Combine every rank's signals and deadlines after a step (collective on all ranks).

        Returns:
            The `StopDecision` all ranks share: a signal any rank received (SIGTERM wins over SIGINT
            when both arrived), the time budget spent on any rank, a minutes-checkpoint due on any rank.
        """
        now = self.clock()
        flags = torch.tensor([self.received == signal.SIGINT, self.received == signal.SIGTERM,
                              self.max_s is not None and now - self._start >= self.max_s,
                              self.every_s is not None and now - self._last_ckpt >= self.every_s],
                             dtype=torch.int32, device=device)
        if dist.world_size > 1:
            dist.all_reduce_sum(flags)
        sigint, sigterm, late, due = (bool(v) for v in flags.tolist())
        name = "SIGTERM" if sigterm else "SIGINT" if sigint else None
        return StopDecision(signal=name, out_of_time=late, checkpoint_due=due)
