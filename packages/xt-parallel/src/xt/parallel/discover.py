"""How `parallelize` gets a model's :class:`~xt.parallel.plan.ParallelPlan`: the model's own
``parallel_plan()``, or, for models without one, discovery by the attribute names of HF decoders.

Discovery (:func:`discover_plan`) looks only inside the decoder layers (``model.model.layers`` or
``model.layers``, or ``layers=``):

* MoE: ``layer.mlp.experts`` with weights stacked over E in dim 0, and a ``dispatcher`` on
  ``layer.mlp`` (XT layout) or on ``layer.mlp.experts`` (the HF adapter,
  :mod:`xt.parallel.hf_qwen3_moe`); the router is ``layer.mlp.gate`` when present;
* attention: ``layer.self_attn.core_attention`` (XT) or ``layer.self_attn.xt_core_attention``
  (HF adapter);
* sizes from ``model.config`` (:func:`model_sizes`, :func:`config_sizes`).

Modules outside those layers (e.g. multi-token-prediction heads) are not seen: they stay
unsliced and inside the root FSDP unit. That is why XT's models state their plan, and why
discovery logs a warning naming what it found.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from torch import nn

from xt.parallel.plan import MoEBlockPlan, ParallelPlan

__all__ = ["find_layers", "model_sizes", "config_sizes", "discover_plan", "plan_for"]

log = logging.getLogger(__name__)
_WARNED: set[str] = set()  # model classes already reported (one warning per class and process)


def find_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers: ``model.model.layers`` or ``model.layers``.

    Raises:
        ValueError: neither exists (pass ``layers=`` to :func:`xt.parallel.parallelize`).
    """
    for path in ("model.layers", "layers"):
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, (nn.ModuleList, list, tuple)):
            return layers
    raise ValueError(f"{type(model).__name__} has neither `model.layers` nor `layers`; pass layers= explicitly")


def model_sizes(model) -> dict:
    """``num_experts``, ``num_attention_heads``, ``num_key_value_heads``, ``mtp_layers`` from
    ``model.config`` (:func:`config_sizes`); works on anything with a ``config`` attribute."""
    return config_sizes(getattr(model, "config", None))


def config_sizes(cfg) -> dict:
    """The sizes a layout is checked against, read from a model config (typed or HF-like, before
    any model is built): ``num_experts`` (from ``num_experts``, ``n_routed_experts`` (DeepSeek) or
    ``num_local_experts`` (GPT-OSS, Mixtral); 0 or None for a dense model), ``num_attention_heads``,
    ``num_key_value_heads`` (default: the attention heads) and ``mtp_layers`` (default 0). A
    vision-language config's sizes are those of its ``text_config`` (the part xt.parallel lays out).
    """
    cfg = getattr(cfg, "text_config", None) or cfg
    heads = getattr(cfg, "num_attention_heads", None)
    experts = None
    for name in ("num_experts", "n_routed_experts", "num_local_experts"):
        experts = experts or getattr(cfg, name, None)
    return {"num_experts": experts, "num_attention_heads": heads,
            "num_key_value_heads": getattr(cfg, "num_key_value_heads", None) or heads,
            "mtp_layers": getattr(cfg, "mtp_layers", 0) or 0}


def _moe_block(layer: nn.Module, path: str) -> MoEBlockPlan | None:
    mlp = getattr(layer, "mlp", None)
    experts = getattr(mlp, "experts", None)
    if experts is None:
        return None
    for owner, owner_path in ((mlp, f"{path}.mlp"), (experts, f"{path}.mlp.experts")):
        if isinstance(getattr(owner, "dispatcher", None), nn.Module):
            router = f"{path}.mlp.gate" if isinstance(getattr(mlp, "gate", None), nn.Module) else None
            return MoEBlockPlan(block=f"{path}.mlp", experts=f"{path}.mlp.experts",
                                dispatcher=f"{owner_path}.dispatcher", router=router)
    raise ValueError(f"{type(mlp).__name__}.experts has no `dispatcher` on the MoE block or the experts; for HF "
                     "models call xt.parallel.hf_qwen3_moe.adapt_hf_moe_experts(model) first")


def _attention_core(layer: nn.Module, path: str) -> str | None:
    attn = getattr(layer, "self_attn", None)
    for name in ("core_attention", "xt_core_attention"):
        if getattr(attn, name, None) is not None:
            return f"{path}.self_attn.{name}"
    return None


def discover_plan(model: nn.Module, layers: Sequence[nn.Module] | None = None) -> ParallelPlan:
    """The plan of a model without ``parallel_plan()``, found by attribute names (module docstring).

    Args:
        model: the root module.
        layers: its decoder layers (default :func:`find_layers`); each must be a submodule of `model`.

    Returns:
        A plan with ``source="discovered"``.

    Raises:
        ValueError: no decoder layers, a layer that is not a submodule of `model`, or MoE experts
            without a dispatcher (HF models: call ``adapt_hf_moe_experts`` first).
    """
    layers = list(layers if layers is not None else find_layers(model))
    names = {id(m): n for n, m in model.named_modules()}
    layer_paths, moe, cores = [], [], []
    for i, layer in enumerate(layers):
        if id(layer) not in names:
            raise ValueError(f"layers[{i}] ({type(layer).__name__}) is not a submodule of {type(model).__name__}")
        path = names[id(layer)]
        layer_paths.append(path)
        block = _moe_block(layer, path)
        if block is not None:
            moe.append(block)
        core = _attention_core(layer, path)
        if core is not None:
            cores.append(core)
    sizes = model_sizes(model)
    return ParallelPlan(decoder_layers=tuple(layer_paths), moe_blocks=tuple(moe), attention_cores=tuple(cores),
                        num_experts=sizes["num_experts"], num_attention_heads=sizes["num_attention_heads"],
                        num_key_value_heads=sizes["num_key_value_heads"], mtp_layers=sizes["mtp_layers"],
                        source="discovered")


def plan_for(model: nn.Module, plan: ParallelPlan | Mapping | None = None,
             layers: Sequence[nn.Module] | None = None, *, quiet: bool = False) -> ParallelPlan:
    """The plan `parallelize` follows for `model`, checked against it.

    In order: `plan` if given; else ``model.parallel_plan()`` if the model has one; else
    :func:`discover_plan` (`layers` or the default layers), with one warning per model class that
    says so (unless `quiet`).

    Raises:
        ValueError: a plan that does not fit the model (names the field and path), `layers` given
            for a model that has its own plan, or the errors of :func:`discover_plan`.
    """
    name = type(model).__name__
    if plan is not None:
        result = ParallelPlan.from_dict(plan, "parallelize(plan=...)", source="argument")
        owner = "parallelize(plan=...)"
    elif callable(getattr(model, "parallel_plan", None)):
        owner = f"{name}.parallel_plan()"
        if layers is not None:
            raise ValueError(f"{owner} exists, so layers= is not used; pass plan= to override the model's plan")
        result = ParallelPlan.from_dict(model.parallel_plan(), owner, source="model")
    else:
        owner = f"plan discovered for {name}"
        result = discover_plan(model, layers)
        result.check(model, owner)
        if not quiet and name not in _WARNED:
            _WARNED.add(name)
            log.warning("xt.parallel: %s has no parallel_plan(); found %d decoder layers (%s ...), %d MoE blocks "
                        "and %d core attentions by attribute names. Modules outside these layers are not "
                        "parallelised.", name, len(result.decoder_layers), result.decoder_layers[0],
                        len(result.moe_blocks), len(result.attention_cores))
    result.check(model, owner)
    return result
