"""The ``[model]`` section of a run config, and the model it builds.

A run names its model in one of three ways (:class:`ModelSection`): HF ``config.json`` fields
written inline, a path to a ``config.json``, or a checkpoint folder to start from
(``init_from``: an HF folder or XT weights from ``xt convert``, told apart by
:mod:`xt.models.weights`). Everything that reads the section lives here so that any package
composing a run (``xt train``, an RL driver) builds the same model from it:

* :func:`hf_dict`: the HF ``config.json`` fields the section denotes;
* :func:`section_config`: the family's typed config of them (no weights, nothing allocated);
* :func:`unused_model_keys`: fields written in the section that the family does not read;
* :func:`build_run_model`: the model, randomly initialised or loaded;
* :func:`run_model_source`: the same model on the meta device with how to fill it (random init, or
  each rank reading its rows of an ``init_from`` HF folder), for a layout that materialises only
  each rank's shards; :func:`finish_run_model` then loads ``init_from`` XT weights (DCP) into it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import msgspec
import torch
from torch import nn

from xt.core.config import ConfigStruct, require
from xt.models.common.hf_config import read_config_json
from xt.models.folder import read_folder_config
from xt.models.registry import build_model, config_from_hf, get_spec
from xt.models.weights import WEIGHTS, dcp_load_model, is_xt_weights, load_weights

__all__ = ["ModelSection", "hf_dict", "section_config", "unused_model_keys", "build_run_model", "run_model_source",
           "finish_run_model", "model_parts", "freeze_parts"]


class ModelSection(ConfigStruct):
    """Which model to train.

    Exactly one of the three ways must be given:

    Attributes:
        config: the fields of an HF ``config.json`` written inline (``architectures`` or
            ``model_type`` picks the family, e.g. ``architectures = ["Qwen3MoeForCausalLM"]``);
            the model starts from random weights (seeded by ``train.seed``).
        hf_config: path of an HF ``config.json`` (or its folder); random weights.
        init_from: an HF checkpoint folder (``config.json`` + safetensors) to fine-tune from.
        overrides: HF config fields that replace those of `hf_config` / `init_from` (e.g. a
            smaller ``num_hidden_layers`` for a quick run with `hf_config`).
        attn_backend: core attention backend: "auto" (flash varlen on CUDA when available, else
            SDPA), or a backend name the model family accepts.
        freeze: parts of the model whose parameters are not trained (``requires_grad`` off, left
            out of AdamW), e.g. ``["vision_tower"]`` for a vision-language model (parts:
            ``vision_tower``, ``projector``, ``language_model``); a family without named parts
            accepts none.
    """

    config: dict[str, Any] | None = None
    hf_config: str | None = None
    init_from: str | None = None
    overrides: dict[str, Any] = {}
    attn_backend: str = "auto"
    freeze: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        given = [n for n in ("config", "hf_config", "init_from") if getattr(self, n)]
        require(len(given) == 1, "config",
                f"give exactly one of model.config (inline HF fields), model.hf_config (path) or "
                f"model.init_from (HF checkpoint folder); got {given or 'none'}")


def hf_dict(section: ModelSection) -> dict[str, Any]:
    """The HF ``config.json`` fields of `section`: inline ``config``, or read from ``hf_config`` /
    ``init_from`` (with the folder's weight names: :func:`xt.models.folder.read_folder_config`),
    with ``overrides`` applied.

    Raises:
        xt.models.ConfigError: the ``config.json`` cannot be read or is not a JSON object.
        xt.core.errors.CheckpointError: an ``init_from`` folder whose config and weights disagree
            (e.g. MTP depths announced without weights for some).
    """
    if section.config:  # {} counts as not given (__post_init__)
        d = dict(section.config)
    elif section.hf_config:
        d = read_config_json(Path(section.hf_config))
    else:  # a checkpoint folder: its config read with its weight names (DeepSeek-V3's MTP depths)
        d = read_folder_config(section.init_from)
    d.update(section.overrides)
    return d


def section_config(section: ModelSection) -> Any:
    """The model family's typed config of `section` (:func:`xt.models.config_from_hf` of
    :func:`hf_dict`): sizes to check a layout against before any weights exist.

    Raises:
        xt.models.ModelConfigError: unreadable ``config.json``, unknown architecture or a bad
            field (``.field`` names it).
    """
    return config_from_hf(hf_dict(section))


# HF config.json keys that carry no model structure (or are read under another name) and are
# therefore never reported as unused.
_HF_BOOKKEEPING = {"architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "use_cache",
                   "rope_theta", "rope_scaling", "rope_parameters", "num_experts", "num_local_experts",
                   "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id", "output_router_logits",
                   "attention_dropout", "quantization_config", "auto_map", "scoring_func", "topk_method"}


def unused_model_keys(section: ModelSection) -> list[str]:
    """Keys of an inline ``[model.config]`` (or ``model.overrides``) that the chosen model family
    does not read: most often a typo (``num_expert``), which would otherwise be silently ignored.

    Returns:
        The keys, sorted; ``[]`` when nothing is written inline.
    """
    written = dict(section.config or {}) | dict(section.overrides)
    if not written:
        return []
    fields = {f.name for f in msgspec.structs.fields(get_spec(hf_dict(section)).config_cls)}
    return sorted(k for k in written if k not in fields and k not in _HF_BOOKKEEPING)


def build_run_model(section: ModelSection, device: str | torch.device) -> nn.Module:
    """The model of `section` on `device`: random weights (seed beforehand, e.g. with
    ``xt.core.checkpoint.seed_everything``; float32) or loaded from ``init_from`` (an HF folder or
    XT weights, in the checkpoint's dtype). With random weights `device` may be ``"meta"``: nothing
    is allocated, and ``xt.parallel.apply_layout`` later materialises this rank's shards with the
    same values.

    Raises:
        xt.models.ConfigError: bad or unknown HF config fields (named).
        ValueError: ``model.overrides`` together with ``model.init_from``.
        FileNotFoundError / xt.core.errors.CheckpointError / RuntimeError: `init_from` lacks
            weights or they do not match (:func:`xt.models.weights.load_weights`).
    """
    if section.init_from:
        if section.overrides:
            raise ValueError("model.overrides cannot change the shape of a pretrained checkpoint "
                             "(model.init_from); remove them")
        model = load_weights(section.init_from, device=device, attn_backend=section.attn_backend)
    else:
        model = build_model(hf_dict(section), device=device, attn_backend=section.attn_backend)
    return freeze_parts(model, section.freeze)


def run_model_source(section: ModelSection, device: str | torch.device) -> tuple[nn.Module, Callable | None]:
    """The model of `section` on the meta device, for a run that lays it out before any weights
    exist, and how its shards are filled: ``(model, read)``.

    * random weights: ``read = None`` (``xt.parallel.apply_layout`` initialises each rank's shards;
      seed beforehand);
    * ``init_from`` an HF folder: ``read``, the folder's row reader
      (:func:`xt.models.hf_rows.hf_row_reader`, checked against the model first):
      ``apply_layout(..., read=read)`` then loads each rank's rows only, so no rank ever holds the
      full model; the parameters are float32 master weights whatever the checkpoint's dtype (bf16,
      FP8 or MXFP4 values converted exactly);
    * ``init_from`` XT weights (DCP): ``read = None``; after the layout, :func:`finish_run_model`
      loads each rank's shards from the DCP folder (which reshards into any layout).

    `device` is unused (the model is always on meta); it is kept for symmetry with
    :func:`build_run_model`.

    Raises:
        what :func:`build_run_model` and :func:`xt.models.hf_rows.hf_row_reader` raise
        (``CheckpointError`` for a checkpoint that does not fit its ``config.json``).
    """
    from xt.models.hf_rows import hf_row_reader
    if section.init_from and section.overrides:
        raise ValueError("model.overrides cannot change the shape of a pretrained checkpoint "
                         "(model.init_from); remove them")
    model = freeze_parts(build_model(hf_dict(section), device="meta", attn_backend=section.attn_backend),
                         section.freeze)
    if not section.init_from or is_xt_weights(section.init_from):
        return model, None
    read, _ = hf_row_reader(section.init_from, model.config)
    return model, read


def finish_run_model(section: ModelSection, model: nn.Module) -> nn.Module:
    """After ``xt.parallel.apply_layout`` of a :func:`run_model_source` model: with ``init_from``
    XT weights (DCP), load them into the laid-out `model` in place, each rank reading its shards
    (collective under a process group); otherwise nothing.

    Raises:
        RuntimeError / ValueError (from DCP): the weights do not fit the model.
    """
    if section.init_from and is_xt_weights(section.init_from):
        dcp_load_model(model, Path(section.init_from) / WEIGHTS, None)
    return model


def model_parts(section: ModelSection) -> dict[str, tuple[str, ...]]:
    """The named parts (``xt_param_parts``: ``{part: qualified-name prefixes}``) of the family
    `section` builds, without building it; ``{}`` for a family without parts."""
    return dict(getattr(get_spec(hf_dict(section)).model_cls, "xt_param_parts", None) or {})


def freeze_parts(model: nn.Module, parts: tuple[str, ...]) -> nn.Module:
    """Turn ``requires_grad`` off for every parameter of the named `parts` of `model` (in place).

    Raises:
        ValueError: a part the model does not have (naming ``model.freeze`` and the allowed parts).
    """
    known = getattr(model, "xt_param_parts", None) or {}
    bad = [p for p in parts if p not in known]
    if bad:
        raise ValueError(f"model.freeze: {type(model).__name__} has no part {bad}; parts: {sorted(known) or 'none'}")
    prefixes = tuple(x for p in parts for x in known[p])
    for name, p in model.named_parameters():
        if prefixes and name.startswith(prefixes):
            p.requires_grad_(False)
    return model
