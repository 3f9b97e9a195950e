"""The prompts of an RL run: task samples (`[task]`), rendered to token ids, drawn in a seeded order.

`task_samples` builds the samples (reasoning-gym or a JSONL file), `render_prompt` turns one into
the token ids the rollout engine continues (the chat template of `xt.data.chat.encode_chat_prompt`,
so the ids are the ones the trainer scores), and `PromptSource` hands out ``n`` per step in a
permutation drawn per epoch from ``task.seed``. Its state (epoch, position) is checkpointed, so a
resumed run draws the same prompts as an uninterrupted one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from xt.core.errors import ConfigError
from xt.rl.run_config import TaskConfig

__all__ = ["task_samples", "render_prompt", "PromptSource"]


def _jsonl(path: str) -> list[dict[str, Any]]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"task.path = {path!r}: no such file (a JSONL file of {{\"question\", \"answer\"}} lines)",
                          key="task.path")
    out = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}:{i}: not a JSON line: {e.msg}") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("question"), str) or "answer" not in rec:
            raise ConfigError(f"{p}:{i}: each line needs a string 'question' and an 'answer'")
        out.append(rec)
    if not out:
        raise ConfigError(f"task.path = {path!r}: the file holds no samples", key="task.path")
    return out


def task_samples(task: TaskConfig) -> list[dict[str, Any]]:
    """The samples of `task`: dicts with ``question``, ``answer`` (and the task's metadata).

    Raises:
        ConfigError: a missing or malformed JSONL file (naming file and line), or a reasoning-gym
            task/config it rejects (naming ``task.name`` / ``task.config``).
        ImportError: reasoning-gym is not installed (``pip install 'xt-rl[gym]'``).
    """
    if task.source == "jsonl":
        return _jsonl(task.path)
    from xt.rl.rewards.gym_tasks import reasoning_gym_samples

    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in task.config.items()}
    try:
        return reasoning_gym_samples(task.name, task.size, task.seed, **cfg)
    except (ValueError, TypeError, KeyError, AssertionError) as e:
        raise ConfigError(f"task.name = {task.name!r} / task.config = {task.config!r}: reasoning-gym refused it: "
                          f"{type(e).__name__}: {e}", key="task.name") from None


def render_prompt(tokenizer: Any, task: TaskConfig, sample: dict[str, Any]) -> list[int]:
    """Token ids of the prompt for `sample`: ``task.prompt_template`` with its question, as one user
    turn (after ``task.system_prompt``) of the chat template, or the plain text when not ``task.chat``."""
    text = task.prompt_template.replace("{question}", sample["question"])
    if not task.chat:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    from xt.data.chat import encode_chat_prompt

    msgs = ([{"role": "system", "content": task.system_prompt}] if task.system_prompt else []) + \
        [{"role": "user", "content": text}]
    return encode_chat_prompt(tokenizer, msgs)


class PromptSource:
    """Samples in a seeded order, epoch after epoch (module docstring).

    Args:
        samples: the task's samples (>= 1).
        seed: the order's seed (epoch e uses ``seed + e``).
    """

    def __init__(self, samples: list[dict[str, Any]], seed: int = 0) -> None:
        if not samples:
            raise ValueError("PromptSource needs at least one sample")
        self.samples, self.seed = samples, seed
        self.epoch, self.pos = 0, 0
        self._order = self._perm()

    def _perm(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(len(self.samples), generator=g).tolist()

    def next(self, n: int) -> list[dict[str, Any]]:
        """The next `n` samples (crossing into the next epoch's order when this one ends)."""
        out = []
        while len(out) < n:
            if self.pos == len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._perm()
            out.append(self.samples[self._order[self.pos]])
            self.pos += 1
        return out

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "pos", "size"}``."""
        return {"epoch": self.epoch, "pos": self.pos, "size": len(self.samples)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue where `state` was taken.

        Raises:
            ValueError: the state is of a task with another number of samples.
        """
        if int(state["size"]) != len(self.samples):
            raise ValueError(f"prompt source state is of {state['size']} samples, this task has {len(self.samples)}")
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._perm()
