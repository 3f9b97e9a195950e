"""InternVL state dict <-> HF checkpoint keys.

transformers 5 writes an ``InternVLForConditionalGeneration`` with the original InternVL prefixes
(what the hub's ``-hf`` checkpoints hold); ours are its module tree::

    ours                               HF file
    model.vision_tower.*               vision_tower.*
    model.multi_modal_projector.*      multi_modal_projector.*
    model.language_model.*             language_model.model.*
    lm_head.weight                     language_model.lm_head.weight (absent when tied)

The MoE experts are stacked in ours and per expert in the file (:mod:`xt.models.common.expert_keys`).
Reading also accepts the module-tree form (``model.language_model.*``, ``lm_head.weight``).
"""
from __future__ import annotations

from typing import Callable

import torch

from xt.models.common.expert_keys import plain_rows, renamed_view, stack_experts, unstack_experts
from xt.models.internvl.config import InternVLConfig

__all__ = ["to_hf", "from_hf", "hf_rows"]

_OUT = (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
        ("model.vision_tower.", "vision_tower."), ("model.multi_modal_projector.", "multi_modal_projector."))
_EMBED, _HEAD = "model.language_model.embed_tokens.weight", "lm_head.weight"


def _rename(key: str, table: tuple[tuple[str, str], ...]) -> str | None:
    for src, dst in table:
        if key.startswith(src):
            return dst + key[len(src):]
    return None


def to_hf(state: dict[str, torch.Tensor], config: InternVLConfig) -> dict[str, torch.Tensor]:
    """Our ``model.state_dict()`` -> HF file keys (per-expert weights; the head dropped when tied).

    Raises:
        ValueError: a key outside the four parts (a bug).
    """
    out = {}
    for k, t in unstack_experts(state).items():
        if config.tie_word_embeddings and k == _HEAD:
            continue
        new = _rename(k, _OUT)
        if new is None:
            raise ValueError(f"unexpected InternVL state key {k}")
        out[new] = t
    return out


def _from_file_key(key: str) -> str | None:
    if key.startswith(("model.", "lm_head.")):
        return key  # module-tree form already
    return _rename(key, tuple((dst, src) for src, dst in _OUT))


def from_hf(keys: list[str], get: Callable[[str], torch.Tensor], config: InternVLConfig,
            source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """HF checkpoint keys -> our state dict (for ``load_state_dict(strict=True)``).

    Keys outside the four parts are kept under their own name, so the caller reports them as
    unexpected.

    Raises:
        ValueError: missing expert weights, two keys naming the same tensor, or a tied model
            without the embedding.
    """
    xt_keys, read = renamed_view(keys, get, lambda k: _from_file_key(k) or k)
    state = stack_experts(xt_keys, read, source)
    if config.tie_word_embeddings:
        if _EMBED not in state:
            raise ValueError(f"{source}: missing key language_model.model.embed_tokens.weight")
        state[_HEAD] = state[_EMBED]
    return state


def hf_rows(config: InternVLConfig, keys: set[str]) -> tuple[Callable[[str], str | None], Callable]:
    """The sharded-load view of an InternVL checkpoint (``ModelSpec.hf_rows``, :mod:`xt.models.hf_rows`):
    ``(rename, load_rows)``. File keys are renamed to our module tree (the language model's per-expert
    weights keep their per-expert form, which the row reader stacks); rows are read as stored.
    A tied head is read as ``model.language_model.embed_tokens.weight`` (the row reader asks
    the model's ``xt_embed_path``)."""
    return _from_file_key, plain_rows(config, keys)[1]
