"""`xt.core.engine.stop.StopWatch`: signals are recorded (a second one aborts), deadlines follow the
clock, and the old handlers come back."""
from __future__ import annotations

import os
import signal

import pytest
import torch

from xt.core.distributed import LocalDistContext
from xt.core.engine.stop import StopWatch

CPU = torch.device("cpu")


def test_first_signal_is_recorded_second_aborts_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopWatch() as w:
        assert not w.poll(LocalDistContext(), CPU).stop
        os.kill(os.getpid(), signal.SIGTERM)
        d = w.poll(LocalDistContext(), CPU)
        assert d.stop and d.signal == "SIGTERM" and not d.out_of_time
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before


def test_deadlines_follow_the_clock():
    now = [0.0]
    w = StopWatch(max_minutes=10, every_minutes=3, catch_signals=False, clock=lambda: now[0])
    with w:
        now[0] = 179.0
        assert w.poll(LocalDistContext(), CPU) == type(w.poll(LocalDistContext(), CPU))()
        now[0] = 180.0
        d = w.poll(LocalDistContext(), CPU)
        assert d.checkpoint_due and not d.stop
        w.checkpointed()
        now[0] = 359.0
        assert not w.poll(LocalDistContext(), CPU).checkpoint_due
        now[0] = 600.0
        d = w.poll(LocalDistContext(), CPU)
        assert d.out_of_time and d.stop and d.signal is None and d.checkpoint_due
