"""The plain-data parallel plan of an XT decoder: where its layers, MoE blocks and core attentions are.

Each family's ``parallel_plan()`` returns :func:`decoder_plan`'s dict. Its keys are the fields of
``xt.parallel.plan.ParallelPlan`` (docs/architecture.md, Parallelism). It is plain data (module
paths as ``get_submodule`` takes them, and sizes) so the models need not import xt.parallel and
know nothing of meshes or ranks. The swap points it names are the ones docs/contracts.md fixes:
``layer.self_attn.core_attention``, ``layer.mlp.dispatcher`` and the stacked
``layer.mlp.experts`` of every :class:`~xt.models.common.moe.MoEBlock`.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from xt.models.common.moe import MoEBlock

__all__ = ["decoder_plan"]


def decoder_plan(model: nn.Module, layer_lists: Sequence[str], *, num_experts: int | None,
                 num_attention_heads: int, num_key_value_heads: int | None, mtp_layers: int = 0) -> dict:
    """The plan of `model`, whose decoder layers are the entries of the ``nn.ModuleList``s at `layer_lists`.

    Every layer has ``self_attn.core_attention``; a layer whose ``mlp`` is an ``MoEBlock`` adds a
    MoE entry (``gate`` router, ``experts``, ``dispatcher``).

    Args:
        model: the causal LM (the root the paths start from).
        layer_lists: paths of the layer lists, in execution order (``["model.layers", "mtp"]``).
        num_experts: E of the MoE blocks (ignored, and reported as None, when there are none).
        num_attention_heads, num_key_value_heads: the heads the core attention sees (Hq, Hkv).
        mtp_layers: multi-token-prediction depth.

    Returns:
        ``{"decoder_layers", "moe_blocks", "attention_cores", "num_experts", "num_attention_heads",
        "num_key_value_heads", "mtp_layers"}`` (lists of str paths, dicts of paths, ints).

    Raises:
        AttributeError: a path of `layer_lists` that is not a submodule (a bug in the family).
    """
    layers, moe, cores = [], [], []
    for list_path in layer_lists:
        for i, layer in enumerate(model.get_submodule(list_path)):
            path = f"{list_path}.{i}"
            layers.append(path)
            cores.append(f"{path}.self_attn.core_attention")
            if isinstance(layer.mlp, MoEBlock):
                mlp = f"{path}.mlp"
                moe.append({"block": mlp, "router": f"{mlp}.gate", "experts": f"{mlp}.experts",
                            "dispatcher": f"{mlp}.dispatcher"})
    return {"decoder_layers": layers, "moe_blocks": moe, "attention_cores": cores,
            "num_experts": num_experts if moe else None, "num_attention_heads": num_attention_heads,
            "num_key_value_heads": num_key_value_heads, "mtp_layers": mtp_layers}
