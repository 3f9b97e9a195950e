"""How many multi-token-prediction depths a DeepSeek-V3 / Kimi K2 checkpoint folder holds.

HF's config field for the MTP depth is ``num_nextn_predict_layers`` (transformers' ``num_mtp_layers``),
and depth k's weights are hub layer ``model.layers.{num_hidden_layers + k}.*`` (XT weights: ``mtp.{k}.*``).
The field alone does not say whether the weights are there: the DeepSeek-V3 hub folder announces 1
and holds layer 61, while transformers writes its default 1 with no MTP weights. So a folder's
config is read with its weight names: XT's ``mtp_layers`` becomes the announced depth when every
announced depth has weights, and stays 0 when none has (an explicit ``mtp_layers`` in config.json
is kept). XT's export writes ``num_nextn_predict_layers = mtp_layers``
(``DeepseekV3Config.to_hf_dict``), so save -> load keeps the MTP weights.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from xt.core.errors import CheckpointError

__all__ = ["mtp_config_of_folder"]

_HUB_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_XT_DEPTH = re.compile(r"^mtp\.(\d+)\.")


def mtp_config_of_folder(d: dict[str, Any], keys: Iterable[str], source: str = "checkpoint") -> dict[str, Any]:
    """`d` (a folder's ``config.json`` fields) with ``mtp_layers`` set from the folder's weights.

    Args:
        d: the HF config dict; returned unchanged when it sets ``mtp_layers`` itself, announces no
            MTP depth, or its ``num_hidden_layers`` / ``num_nextn_predict_layers`` are not integers
            (the config's own validation reports those).
        keys: the folder's weight names (hub names, or XT names for an XT-weights folder).
        source: the folder, for the error message.

    Returns:
        A new dict with ``mtp_layers = num_nextn_predict_layers`` when every announced depth has
        weights; `d` itself when none has.

    Raises:
        xt.core.errors.CheckpointError: some announced depths have weights and others do not.
    """
    n, L = d.get("num_nextn_predict_layers"), d.get("num_hidden_layers")
    if "mtp_layers" in d or not isinstance(n, int) or not isinstance(L, int) or n <= 0:
        return d
    present = set()
    for key in keys:
        hub, xt = _HUB_LAYER.match(key), _XT_DEPTH.match(key)
        depth = int(hub.group(1)) - L if hub else int(xt.group(1)) if xt else -1
        if 0 <= depth < n:
            present.add(depth)
    if not present:
        return d
    if len(present) < n:
        raise CheckpointError(f"{source}: config.json announces num_nextn_predict_layers = {n} MTP depths but the "
                              f"weights hold depths {sorted(present)} only (hub layers "
                              f"{[L + k for k in sorted(present)]}); the others are missing")
    return {**d, "mtp_layers": n}
