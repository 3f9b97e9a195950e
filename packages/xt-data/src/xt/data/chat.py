"""Chat SFT tokenization with the tokenizer's own chat template and an assistant-token mask.

A conversation is rendered once with ``tokenizer.apply_chat_template`` and tokenized as a whole
(so the ids equal ``apply_chat_template(..., tokenize=True)``). The loss mask marks the assistant
turns only:

- if the template has ``{% generation %}`` markers, transformers' own
  ``return_assistant_tokens_mask`` is used;
- otherwise (the Qwen3 template has none) the assistant header is learnt from the template
  itself (what ``add_generation_prompt=True`` appends, ``<|im_start|>assistant\\n`` for Qwen3), and
  each assistant turn's character span starts after its header and runs through the end-of-turn
  token (the tokenizer's EOS, ``<|im_end|>`` for Qwen3), so the model learns to stop. Every span is
  checked to contain its message's content. Tokens whose first character lies in a span are
  assistant tokens (offset mapping).
  Anything the template itself puts inside the turn (Qwen3's empty ``<think>\\n\\n</think>\\n\\n``
  before the final answer) belongs to the assistant turn, as it would at generation time.
"""
from __future__ import annotations

import torch

from xt.data.errors import DataError


def has_generation_markers(template: str | None) -> bool:
    """True when a chat template marks assistant output with ``{% generation %}`` blocks."""
    return bool(template) and "generation" in template and "endgeneration" in template


def generation_prompt(tokenizer) -> str:
    """The assistant header the template appends for ``add_generation_prompt=True``
    (``"<|im_start|>assistant\\n"`` for Qwen3), found by rendering a one-message probe both ways.

    Raises:
        DataError: the template's generation prompt is not a pure suffix of the plain rendering.
    """
    probe = [{"role": "user", "content": "xt-probe"}]
    plain = tokenizer.apply_chat_template(probe, tokenize=False)
    with_prompt = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    if not with_prompt.startswith(plain) or len(with_prompt) == len(plain):
        raise DataError("chat template: add_generation_prompt does not append an assistant header; "
                        "use a template with {% generation %} markers")
    return with_prompt[len(plain):]


def assistant_spans(messages: list[dict], rendered: str, header: str, eos: str,
                    where: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the assistant turns of one rendered conversation.

    The k-th assistant message's turn starts after the k-th occurrence of `header` (the generation
    prompt) and ends after the next `eos` (end-of-turn token). Each span is checked to contain the
    message's content (after any ``</think>``), so a template that renders turns differently is
    detected instead of silently mislabelled.

    Raises:
        DataError: naming `where` and the message index when a turn cannot be located.
    """
    spans, cursor = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        pos = rendered.find(header, cursor)
        end = rendered.find(eos, pos + len(header)) if pos >= 0 and eos else -1
        if end < 0:
            raise DataError(f"{where}: cannot locate assistant message {i} (header {header!r}, "
                            f"end-of-turn {eos!r}) in the rendered chat template; use a template "
                            f"with {{% generation %}} markers")
        start, end = pos + len(header), end + len(eos)
        core = m["content"].split("</think>")[-1].strip()
        if core and core not in rendered[start:end]:
            raise DataError(f"{where}: assistant message {i} is not inside its rendered turn "
                            f"{rendered[start:end][:80]!r}...")
        spans.append((start, end))
        cursor = end
    return spans


def spans_to_mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> torch.Tensor:
    """Bool ``[T]`` mask: token t is True when its first character lies in one of `spans`."""
    if not spans or not offsets:
        return torch.zeros(len(offsets), dtype=torch.bool)
    first = torch.tensor([a for a, _ in offsets], dtype=torch.int64)
    starts = torch.tensor([s for s, _ in spans], dtype=torch.int64)
    ends = torch.tensor([e for _, e in spans], dtype=torch.int64)
    k = torch.searchsorted(starts, first, right=True) - 1
    return (k >= 0) & (first < ends[k.clamp(min=0)])


def encode_chat_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a generation prompt: `messages` rendered by the chat template with the assistant
    header appended (``add_generation_prompt=True``), tokenized without adding special tokens again.

    The template already writes any BOS, so the ids hold it exactly once, and they are a prefix of
    :func:`encode_chats`'s ids for the same messages followed by the assistant's answer (what an RL
    rollout samples and the trainer then scores).

    Raises:
        DataError: the tokenizer has no chat template (naming it).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template; "
                        f"chat prompts need one")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_chats(tokenizer, convs: list[list[dict]], wheres: list[str]) -> list[tuple[list[int], torch.Tensor]]:
    """Tokenize conversations with the tokenizer's chat template.

    Returns, per conversation, ``(input_ids, assistant_mask)``: the ids of the full rendering
    (equal to ``apply_chat_template(conv, tokenize=True)``) and a bool ``[T]`` tensor that is True on
    assistant-turn tokens (content and end-of-turn token).

    Raises:
        DataError: the tokenizer has no chat template (naming it), or a turn cannot be located.
    """
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise DataError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template; "
                        f"chat data (data.mode='chat') needs one")
    if not convs:
        return []
    if has_generation_markers(template):
        out = tokenizer.apply_chat_template(convs, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        return [(list(ids), torch.tensor(m, dtype=torch.bool))
                for ids, m in zip(out["input_ids"], out["assistant_masks"])]
    rendered = tokenizer.apply_chat_template(convs, tokenize=False)
    header, eos = generation_prompt(tokenizer), tokenizer.eos_token
    enc = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for c, conv in enumerate(convs):
        spans = assistant_spans(conv, rendered[c], header, eos, wheres[c])
        out.append((list(enc["input_ids"][c]), spans_to_mask(enc["offset_mapping"][c], spans)))
    return out
