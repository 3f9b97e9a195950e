"""The reward worker process: one reward function, called on the process's main thread.

Started by `xt.rl.rewards.pool.RewardPool` as ``python -m xt.rl.rewards._worker SPEC``; it talks
over its stdin/stdout with length-prefixed pickle frames (`xt.rl.rewards.protocol`). The
process's own stdout is pointed at stderr first, so a reward function that prints cannot corrupt
the protocol. Because each call runs on the main thread of its own process, libraries whose
timeouts use ``signal.alarm`` (math-verify) work, and the pool can kill a call that hangs.

Messages: worker → ``("ready", None)`` once the function is imported (and its optional
``warmup()`` attribute has run), or ``("start_error", message)``; then per task
parent → ``(task_id, completion, sample)``, worker → ``(task_id, "ok", float)`` or
``(task_id, "error", traceback text)``.
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import Any

from xt.rl.rewards.protocol import recv_frame, send_frame

__all__ = ["main"]


def _as_reward(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"the reward function returned {type(value).__name__} {value!r}, not a number")
    return float(value)


def main(spec: str) -> None:
    """Serve tasks for the reward function `spec` until stdin closes."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer
    try:
        from xt.rl.rewards.registry import load_reward_fn
        fn = load_reward_fn(spec)
        warmup = getattr(fn, "warmup", None)
        if callable(warmup):
            warmup()
    except Exception as err:  # reported to the parent, which raises RewardError
        send_frame(out, ("start_error", f"{type(err).__name__}: {err}"))
        return
    send_frame(out, ("ready", None))
    while True:
        try:
            task_id, completion, sample = recv_frame(inp)
        except EOFError:
            return
        try:
            send_frame(out, (task_id, "ok", _as_reward(fn(completion, sample))))
        except Exception:
            send_frame(out, (task_id, "error", traceback.format_exc(limit=8)))


if __name__ == "__main__":
    main(sys.argv[1])
