"""User reward functions for the reward-pool tests, named by import path ("rl_reward_fns:by_kind").

``by_kind`` acts as ``sample["kind"]`` says: "exact" (1.0 if the completion equals the answer),
"sleep" (hangs), "raise", "text" (returns a string), "exit" (the process dies), "print" (writes
to stdout, then scores), "thread" (checks it runs on the main thread)."""
from __future__ import annotations

import os
import threading
import time


def by_kind(completion, sample):
    kind = sample["kind"]
    if kind == "exact":
        return float(completion.strip() == sample["answer"])
    if kind == "sleep":
        time.sleep(60)
    if kind == "raise":
        raise RuntimeError("bad sample " + sample["answer"])
    if kind == "text":
        return "1.0"
    if kind == "exit":
        os._exit(3)
    if kind == "print":
        print("noise on stdout " * 100)
        return 0.25
    if kind == "thread":
        return float(threading.current_thread() is threading.main_thread())
    raise KeyError(kind)


NOT_CALLABLE = 3


def vowel_share(completion, sample):
    """A reward a random model's text already varies on: the share of vowels among its letters."""
    letters = [c for c in completion.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0


def slow_vowel_share(completion, sample):
    """`vowel_share` after 50 ms: a reward call long enough for a test to kill its actor mid-call."""
    time.sleep(0.05)
    return vowel_share(completion, sample)
