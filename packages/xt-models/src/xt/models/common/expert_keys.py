"""Map stacked expert weights to HF per-expert checkpoint keys and back.

HF hub checkpoints (and transformers 5 ``save_pretrained``) store MoE experts one by one::

    {prefix}.experts.{e}.gate_proj.weight [F, D]
    {prefix}.experts.{e}.up_proj.weight   [F, D]
    {prefix}.experts.{e}.down_proj.weight [D, F]

Ours (:mod:`xt.models.common.experts`): ``{prefix}.experts.gate_up_proj [E, 2F, D]`` (gate rows
first) and ``{prefix}.experts.down_proj [E, D, F]``.
"""
from __future__ import annotations

import re
from typing import Callable

import torch

__all__ = ["unstack_experts", "stack_experts", "renamed_view", "tie_head", "plain_rows", "EMBED_KEY", "HEAD_KEY"]

_PER_EXPERT = re.compile(r"^(?P<prefix>.*)\.experts\.(?P<e>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\.weight$")


def unstack_experts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every ``*.experts.gate_up_proj`` / ``*.experts.down_proj`` by per-expert HF keys.

    Returns a new dict (tensors are views of the stacked ones); other keys pass through.
    """
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        if key.endswith(".experts.gate_up_proj"):
            prefix = key[: -len(".gate_up_proj")]
            half = t.shape[1] // 2
            for e in range(t.shape[0]):
                out[f"{prefix}.{e}.gate_proj.weight"] = t[e, :half]
                out[f"{prefix}.{e}.up_proj.weight"] = t[e, half:]
        elif key.endswith(".experts.down_proj"):
            prefix = key[: -len(".down_proj")]
            for e in range(t.shape[0]):
                out[f"{prefix}.{e}.down_proj.weight"] = t[e]
        else:
            out[key] = t
    return out


def stack_experts(keys: list[str], get: Callable[[str], torch.Tensor], source: str = "checkpoint",
                  num_experts: int | None = None) -> dict[str, torch.Tensor]:
    """Build a state dict with stacked experts from checkpoint keys.

    Args:
        keys: all keys of the checkpoint.
        get: loads one tensor by key (lets callers read shards lazily).
        source: named in error messages.
        num_experts: E, when known: every MoE layer must have experts ``0..E-1`` (else the highest
            expert index present decides).

    Returns:
        ``{key: tensor}`` where per-expert keys became ``*.experts.gate_up_proj`` and
        ``*.experts.down_proj``; other keys pass through.

    Raises:
        ValueError: an MoE layer with a missing expert or projection (the key is named).
    """
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, dict[int, dict[str, str]]] = {}
    for key in keys:
        m = _PER_EXPERT.match(key)
        if m is None:
            out[key] = get(key)
            continue
        groups.setdefault(m["prefix"], {}).setdefault(int(m["e"]), {})[m["proj"]] = key
    for prefix, experts in groups.items():
        n = num_experts if num_experts is not None else max(experts) + 1
        gate_up, down = [], []
        for e in range(n):
            projs = experts.get(e, {})
            for proj in ("gate_proj", "up_proj", "down_proj"):
                if proj not in projs:
                    raise ValueError(f"{source}: missing key {prefix}.experts.{e}.{proj}.weight")
            gate_up.append(torch.cat([get(projs["gate_proj"]), get(projs["up_proj"])], dim=0))
            down.append(get(projs["down_proj"]))
        out[f"{prefix}.experts.gate_up_proj"] = torch.stack(gate_up)
        out[f"{prefix}.experts.down_proj"] = torch.stack(down)
    return out


def renamed_view(keys: list[str], get: Callable[[str], torch.Tensor], rename: Callable[[str], str | None],
                 load: Callable[[str, Callable[[str], torch.Tensor]], torch.Tensor] | None = None
                 ) -> tuple[list[str], Callable[[str], torch.Tensor]]:
    """A checkpoint seen through a family's key mapping, still read one tensor at a time.

    The one way every family maps HF keys (`stack_experts` then stacks per-expert keys):

    Args:
        keys: the checkpoint's keys; get: reads one of them.
        rename: HF key -> XT key, or None to skip it (e.g. quantisation scales, duplicated copies).
        load: ``load(hf_key, get) -> tensor`` for keys whose value needs more than a read (e.g.
            FP8 / MXFP4 dequantisation with their scale keys, or a layout transform); None = ``get``.

    Returns:
        ``(xt_keys, get_xt)``: the renamed keys and a reader by XT key.

    Raises:
        ValueError: two checkpoint keys renamed to the same XT key.
    """
    back: dict[str, str] = {}
    for k in keys:
        new = rename(k)
        if new is None:
            continue
        if new in back:
            raise ValueError(f"checkpoint keys {back[new]} and {k} both map to {new}")
        back[new] = k
    read = (lambda k: load(back[k], get)) if load is not None else (lambda k: get(back[k]))
    return list(back), read


EMBED_KEY, HEAD_KEY = "model.embed_tokens.weight", "lm_head.weight"


def tie_head(state: dict[str, torch.Tensor], tied: bool, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """With tied embeddings, ``lm_head.weight`` is the embedding (HF writes only the embedding).

    Raises:
        ValueError: ``tied`` and no ``model.embed_tokens.weight``.
    """
    if tied:
        if EMBED_KEY not in state:
            raise ValueError(f"{source}: missing key {EMBED_KEY}")
        state[HEAD_KEY] = state[EMBED_KEY]
    return state


def plain_rows(config, keys: set[str]) -> tuple[Callable[[str], str], Callable]:
    """The sharded-load view (``ModelSpec.hf_rows``) of a family whose XT keys are HF's (per-expert
    weights aside, which :mod:`xt.models.hf_rows` stacks): keys unchanged, rows read as stored."""
    def load_rows(key: str, get_rows: Callable[[str, int, int], torch.Tensor], start: int, stop: int) -> torch.Tensor:
        return get_rows(key, start, stop)
    return (lambda key: key), load_rows
