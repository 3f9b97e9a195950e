"""Finding the final answer in a completion: the last ``<answer>...</answer>`` span.

Both built-in rewards ask the model to end with its answer between tags (the reasoning-gym
convention); `tagged_answer` finds that span without any optional dependency.
"""
from __future__ import annotations

import re

__all__ = ["tagged_answer"]


def tagged_answer(completion: str, tag: str = "answer") -> str | None:
    """The stripped text inside the last ``<tag>...</tag>`` of `completion`, or None if there is none.

    Args:
        completion: the model's text.
        tag: the tag name (letters, digits, ``_`` or ``-``).

    Raises:
        ValueError: a tag name with other characters.
    """
    if not re.fullmatch(r"[\w-]+", tag):
        raise ValueError(f"tagged_answer: tag must be letters, digits, '_' or '-', got {tag!r}")
    spans = re.findall(rf"<{tag}>(.*?)</{tag}>", completion, flags=re.DOTALL)
    return spans[-1].strip() if spans else None
