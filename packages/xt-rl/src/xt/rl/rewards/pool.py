"""`RewardPool`: a reward function evaluated in worker processes, with a timeout per call.

Each worker is a fresh interpreter (``python -m xt.rl.rewards._worker``, not a fork of the
trainer) that imports the reward function once and runs every call on its main thread, so
signal-based timeouts inside the function (math-verify's ``signal.alarm``) work. The pool gives
each call ``timeout_s`` seconds of wall time from the moment it is handed to a ready worker; a
call still running then is abandoned, its worker killed and replaced, and the sample gets
``timeout_reward``. A call that raises gets ``error_reward``, or `score` raises `RewardError`
when that is None. A worker that dies (e.g. the function called ``os._exit``) counts as an error
for its sample and is replaced.
"""
from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from xt.rl.rewards.protocol import recv_frame, send_frame
from xt.rl.rewards.registry import RewardError, reward_fn_path

__all__ = ["RewardPool", "RewardResults"]


class RewardResults(NamedTuple):
    """Result of `RewardPool.score`, in the order of the inputs.

    Attributes:
        rewards: one float per sample (``timeout_reward`` / ``error_reward`` where the call failed).
        status: one of "ok", "timeout", "error" per sample.
        errors: ``{index: traceback or reason}`` of the samples whose call failed with an error.
    """
    rewards: list[float]
    status: list[str]
    errors: dict[int, str]

    @property
    def counts(self) -> dict[str, int]:
        """``{"ok": n, "timeout": n, "error": n}``: samples per status (errors include dead workers)."""
        return {k: self.status.count(k) for k in ("ok", "timeout", "error")}


class _Worker:
    def __init__(self, spec: str, start_timeout_s: float) -> None:
        paths = [p for p in sys.path if p]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        self.proc = subprocess.Popen([sys.executable, "-m", "xt.rl.rewards._worker", spec],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.spec, self.start_timeout_s = spec, start_timeout_s
        self.ready = False

    def wait_ready(self) -> None:
        if self.ready:
            return
        if not select.select([self.proc.stdout], [], [], self.start_timeout_s)[0]:
            self.kill()
            raise RewardError(f"rl.reward.function = {self.spec!r}: the reward worker did not start within "
                              f"{self.start_timeout_s:g} s")
        try:
            kind, message = recv_frame(self.proc.stdout)
        except EOFError:
            code = self.proc.wait()
            raise RewardError(f"rl.reward.function = {self.spec!r}: the reward worker exited with code {code} "
                              "while starting (its error is on stderr)") from None
        if kind != "ready":
            self.kill()
            raise RewardError(f"rl.reward.function = {self.spec!r}: {message}")
        self.ready = True

    def kill(self, grace_s: float = 0.0) -> None:
        """End the worker: close its stdin (it exits when idle), then kill it after `grace_s`."""
        if grace_s > 0:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=grace_s)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


class RewardPool:
    """Score completions with one reward function in `workers` processes (module docstring).

    Args:
        function: a built-in name ("math_verify", "reasoning_gym") or ``"pkg.module:function"``
            (``rl.reward.function``) of ``fn(completion: str, sample: Mapping) -> float``; it must
            be importable in a fresh interpreter (the parent's ``sys.path`` is passed on).
        workers: processes, >= 1 (``rl.reward.workers``).
        timeout_s: seconds per call, > 0 (``rl.reward.timeout_s``).
        timeout_reward: reward of a timed-out call (``rl.reward.timeout_reward``; NaN allowed).
        error_reward: reward of a call that raised, or None to raise (``rl.reward.error_reward``).
        start_timeout_s: seconds a worker may take to import the function.

    Raises:
        RewardError: a bad function name; at the first `score`, a function that cannot be
            imported in the workers.
        ValueError: ``workers < 1`` or ``timeout_s <= 0``.
    """

    def __init__(self, function: str = "math_verify", *, workers: int = 2, timeout_s: float = 10.0,
                 timeout_reward: float = 0.0, error_reward: float | None = None,
                 start_timeout_s: float = 120.0) -> None:
        if workers < 1 or not timeout_s > 0:
            raise ValueError(f"RewardPool: need workers >= 1 and timeout_s > 0, got {workers}, {timeout_s} "
                             "(rl.reward.workers, rl.reward.timeout_s)")
        self.function = reward_fn_path(function)
        self.num_workers, self.timeout_s = workers, float(timeout_s)
        self.timeout_reward, self.error_reward = float(timeout_reward), error_reward
        self.start_timeout_s = start_timeout_s
        self._workers: list[_Worker] = []

    @classmethod
    def from_config(cls, config: Any) -> RewardPool:
        """The pool of an ``[rl.reward]`` section (`xt.rl.config.RewardConfig`)."""
        return cls(config.function, workers=config.workers, timeout_s=config.timeout_s,
                   timeout_reward=config.timeout_reward, error_reward=config.error_reward)

    def _start(self) -> None:
        while len(self._workers) < self.num_workers:
            self._workers.append(_Worker(self.function, self.start_timeout_s))
        for w in self._workers:
            w.wait_ready()

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers[self._workers.index(worker)] = fresh = _Worker(self.function, self.start_timeout_s)
        fresh.wait_ready()

    def score(self, completions: Sequence[str], samples: Sequence[Mapping[str, Any]]) -> RewardResults:
        """The reward of each completion for its sample.

        Args:
            completions: N completion texts.
            samples: N samples (picklable mappings), in the same order.

        Returns:
            `RewardResults`.

        Raises:
            ValueError: N differs.
            RewardError: a call raised and ``error_reward`` is None (the message names the first
                failing sample and its traceback), or the workers cannot start.
        """
        if len(completions) != len(samples):
            raise ValueError(f"RewardPool.score: {len(completions)} completions for {len(samples)} samples")
        self._start()
        n = len(completions)
        rewards, status, errors = [0.0] * n, ["ok"] * n, {}
        todo, busy = deque(range(n)), {}  # busy: worker -> (index, deadline)
        while todo or busy:
            for w in self._workers:
                if todo and w not in busy:
                    i = todo.popleft()
                    send_frame(w.proc.stdin, (i, completions[i], samples[i]))
                    busy[w] = (i, time.monotonic() + self.timeout_s)
            wait = max(0.0, min(d for _, d in busy.values()) - time.monotonic())
            readable = select.select([w.proc.stdout for w in busy], [], [], wait)[0]
            for w in [w for w in busy if w.proc.stdout in readable]:
                i, _ = busy.pop(w)
                try:
                    _, kind, value = recv_frame(w.proc.stdout)
                except EOFError:
                    kind, value = "error", f"the reward worker exited with code {w.proc.wait()}"
                    self._replace(w)
                if kind == "ok":
                    rewards[i] = value
                else:
                    status[i], errors[i] = "error", value
            now = time.monotonic()
            for w in [w for w, (_, d) in busy.items() if d <= now]:
                i, _ = busy.pop(w)
                status[i], rewards[i] = "timeout", self.timeout_reward
                self._replace(w)
        if errors and self.error_reward is None:
            first = min(errors)
            raise RewardError(f"rl.reward.function = {self.function!r} failed on {len(errors)} of {n} samples "
                              f"(set rl.reward.error_reward to score them instead); sample {first}:\n{errors[first]}")
        for i in errors:
            rewards[i] = float(self.error_reward)
        return RewardResults(rewards, status, errors)

    def close(self) -> None:
        """Stop the workers (closing their stdin ends them; stragglers are killed)."""
        for w in self._workers:
            w.kill(grace_s=2.0)
        self._workers.clear()

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
