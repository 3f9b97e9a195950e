"""The parallel plan: which modules of a model `parallelize` reshapes, written down as plain data.

A model states where its pieces are with a method ``parallel_plan() -> dict`` whose keys are the
fields of :class:`ParallelPlan` (plain lists, strings and ints, so a model does not import
xt.parallel and knows nothing of meshes). All of XT's families provide one. A model without it
(a Hugging Face transformers model, a test toy) gets one from :mod:`xt.parallel.discover`, which
finds the pieces by HF attribute names inside ``model.model.layers`` and logs that it did.

Paths are dotted submodule names as ``model.get_submodule`` takes them (``"model.layers.0"``,
``"mtp.0.mlp.experts"``). Example (DeepSeek-V3 with one dense layer, one MoE layer, one MTP depth)::

    {"decoder_layers": ["model.layers.0", "model.layers.1", "mtp.0"],
     "moe_blocks": [{"block": "model.layers.1.mlp", "router": "model.layers.1.mlp.gate",
                     "experts": "model.layers.1.mlp.experts", "dispatcher": "model.layers.1.mlp.dispatcher"},
                    {"block": "mtp.0.mlp", ...}],
     "attention_cores": ["model.layers.0.self_attn.core_attention", ..., "mtp.0.self_attn.core_attention"],
     "num_experts": 8, "num_attention_heads": 4, "num_key_value_heads": 4, "mtp_layers": 1}
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from torch import nn

__all__ = ["MoEBlockPlan", "ParallelPlan", "resolve"]


def _owner_error(owner: str, what: str) -> ValueError:
    return ValueError(f"{owner}: {what}")


def resolve(model: nn.Module, path: str, field: str, owner: str = "parallel plan") -> nn.Module:
    """``model.get_submodule(path)``, or a ValueError naming the plan field that holds `path`.

    Raises:
        ValueError: `path` is not a submodule of `model`.
    """
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise _owner_error(owner, f"{field} = {path!r} is not a submodule of {type(model).__name__}") from None


@dataclass(frozen=True)
class MoEBlockPlan:
    """One MoE feed-forward block.

    Attributes:
        block: the MoE block (router -> dispatcher -> experts -> combine).
        experts: the module whose direct parameters are stacked over the E experts in dim 0
            (sliced by EP, then one FSDP2 unit on the expert mesh).
        dispatcher: the dispatcher module (docs/contracts.md, MoE dispatch); replaced by
            :class:`~xt.parallel.expert_parallel.AllToAllDispatcher` under EP or a capacity factor.
        router: the router (left as it is, replicated; listed so that the plan names every part of
            the block), or None when unknown (discovered HF blocks without a ``gate``).
    """

    block: str
    experts: str
    dispatcher: str
    router: str | None = None


@dataclass(frozen=True)
class ParallelPlan:
    """Where `parallelize` acts, and the sizes it validates the layout against.

    Attributes:
        decoder_layers: in order; each becomes one FSDP2 unit on the dense mesh, and activation
            checkpointing picks its share among them. Parameters outside them (embeddings, final
            norm, LM head) belong to the root unit.
        moe_blocks: every MoE block, inside a decoder layer or not (e.g. DeepSeek-V3's MTP depths).
        attention_cores: core attention modules ``(q[T,Hq,d], k, v, cu_seqlens, max_seqlen) ->
            [T,Hq,d]``; wrapped in Ulysses under sequence parallelism.
        num_experts: E (global) of the MoE blocks; None for a dense model.
        num_attention_heads, num_key_value_heads: for the Ulysses head split (None if unknown).
        mtp_layers: multi-token-prediction depth (sequence parallelism refuses > 0).
        source: ``"model"`` (from ``parallel_plan()``), ``"argument"`` (passed to `parallelize`)
            or ``"discovered"`` (:func:`xt.parallel.discover.discover_plan`).
    """

    decoder_layers: tuple[str, ...]
    moe_blocks: tuple[MoEBlockPlan, ...] = ()
    attention_cores: tuple[str, ...] = ()
    num_experts: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    mtp_layers: int = 0
    source: str = "model"

    @classmethod
    def from_dict(cls, d: Mapping, owner: str = "parallel plan", source: str = "model") -> ParallelPlan:
        """Read the plain-data form a model returns (module docstring).

        Args:
            d: mapping with the fields of this class except ``source`` (``decoder_layers``
                required); ``moe_blocks`` entries are mappings with ``block``, ``experts``,
                ``dispatcher`` and optionally ``router``.
            owner: who wrote `d`, for error messages (e.g. ``"DeepseekV3ForCausalLM.parallel_plan()"``).
            source: recorded in the result.

        Raises:
            ValueError: not a mapping, unknown or missing fields, wrong types; the message names
                the field (``moe_blocks[2].experts``).
        """
        if isinstance(d, ParallelPlan):
            return d
        if not isinstance(d, Mapping):
            raise _owner_error(owner, f"expected a dict with the fields of ParallelPlan, got {type(d).__name__}")
        known = {f.name for f in fields(cls)} - {"source"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise _owner_error(owner, f"unknown field(s) {unknown}; expected some of {sorted(known)}")
        if "decoder_layers" not in d:
            raise _owner_error(owner, "decoder_layers is missing (the list of decoder layer paths)")

        def paths(field: str, value) -> tuple[str, ...]:
            if isinstance(value, str) or not all(isinstance(p, str) for p in value):
                raise _owner_error(owner, f"{field} must be a list of module paths (str), got {value!r}")
            return tuple(value)

        moe = []
        for i, entry in enumerate(d.get("moe_blocks", ())):
            name = f"moe_blocks[{i}]"
            if not isinstance(entry, Mapping):
                raise _owner_error(owner, f"{name} must be a dict with block, experts, dispatcher, router")
            extra = sorted(set(entry) - {"block", "experts", "dispatcher", "router"})
            if extra:
                raise _owner_error(owner, f"{name}: unknown key(s) {extra}; expected block, experts, dispatcher, router")
            for key in ("block", "experts", "dispatcher"):
                if not isinstance(entry.get(key), str):
                    raise _owner_error(owner, f"{name}.{key} must be a module path (str), got {entry.get(key)!r}")
            router = entry.get("router")
            if router is not None and not isinstance(router, str):
                raise _owner_error(owner, f"{name}.router must be a module path (str) or None, got {router!r}")
            moe.append(MoEBlockPlan(entry["block"], entry["experts"], entry["dispatcher"], router))
        sizes = {}
        for key in ("num_experts", "num_attention_heads", "num_key_value_heads", "mtp_layers"):
            value = d.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise _owner_error(owner, f"{key} must be a non-negative int or None, got {value!r}")
            sizes[key] = value
        if moe and not sizes["num_experts"]:
            raise _owner_error(owner, f"moe_blocks lists {len(moe)} block(s) but num_experts is {sizes['num_experts']!r}")
        return cls(decoder_layers=paths("decoder_layers", d["decoder_layers"]), moe_blocks=tuple(moe),
                   attention_cores=paths("attention_cores", d.get("attention_cores", ())),
                   num_experts=sizes["num_experts"], num_attention_heads=sizes["num_attention_heads"],
                   num_key_value_heads=sizes["num_key_value_heads"], mtp_layers=sizes["mtp_layers"] or 0,
                   source=source)

    def check(self, model: nn.Module, owner: str = "parallel plan") -> None:
        """Every path names a submodule of `model`, and no decoder layer is listed twice.

        Raises:
            ValueError: naming the field and the path.
        """
        if not self.decoder_layers:
            raise _owner_error(owner, f"decoder_layers is empty: {type(model).__name__} lists no decoder layer")
        if len(set(self.decoder_layers)) != len(self.decoder_layers):
            raise _owner_error(owner, "decoder_layers lists a layer twice")
        for i, p in enumerate(self.decoder_layers):
            resolve(model, p, f"decoder_layers[{i}]", owner)
        for i, m in enumerate(self.moe_blocks):
            for key in ("block", "experts", "dispatcher", "router"):
                p = getattr(m, key)
                if p is not None:
                    resolve(model, p, f"moe_blocks[{i}].{key}", owner)
        for i, p in enumerate(self.attention_cores):
            resolve(model, p, f"attention_cores[{i}]", owner)

    def layer_modules(self, model: nn.Module) -> list[nn.Module]:
        """The decoder layer modules of `model`, in plan order.

        Raises:
            ValueError: a path that is not a submodule (names ``decoder_layers[i]``).
        """
        return [resolve(model, p, f"decoder_layers[{i}]") for i, p in enumerate(self.decoder_layers)]

    def sizes(self) -> dict:
        """``num_experts``, ``num_attention_heads``, ``num_key_value_heads``, ``mtp_layers``: the
        keywords of :func:`xt.parallel.mesh.validate_layout` / :func:`~xt.parallel.mesh.build_meshes`."""
        return {"num_experts": self.num_experts, "num_attention_heads": self.num_attention_heads,
                "num_key_value_heads": self.num_key_value_heads or self.num_attention_heads,
                "mtp_layers": self.mtp_layers}

    def layers_without_attention_core(self) -> list[str]:
        """Decoder layers that contain none of ``attention_cores`` (Ulysses cannot cover them)."""
        return [lp for lp in self.decoder_layers if not any(c.startswith(lp + ".") for c in self.attention_cores)]
