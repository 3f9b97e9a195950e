"""Per-GPU memory of a model under a layout, predicted from shapes (``xt plan``).

Input: the model built on the meta device (nothing allocated; its plan says which weights are
experts, decoder layers and MoE blocks), a ``[parallel]`` section and a world size. Every term is
in bytes on one rank (rank 0 unless given):

* ``params``, ``grads``, ``optimizer``: the rank's shards (:mod:`xt.parallel.shard_math`) in the
  master dtype (fp32), fp32 gradients and AdamW's two fp32 moments;
* ``compute_copies``: bf16 copies of plain (non-FSDP) >= 2-D weights (``train.weight_cast =
  "per_step"``, one process without FSDP2 only);
* ``fsdp_buffers``: the root FSDP2 keeps gathered from forward to the end of backward
  (embeddings, LM head, final norm); ``fsdp_layer_buffers``: two decoder layers' gathered
  parameters (the running and the prefetched one) inside forward and backward, resharded at
  the loss; ``fsdp_grad_buffers``, in backward only: the root's full gradient and one layer's
  before its reduce-scatter;
* ``activations``: saved tensors per token of each decoder layer (:func:`layer_activation_elements`)
  times the rank's tokens; a checkpointed layer keeps only its fp32 input (``recompute``: one
  layer's activations again, in backward);
* ``loss``: the fused LM-head loss's buffers, which it fills in forward (final hidden, its
  gradient and the fp32 head-weight gradient per head pass, DeepSeek's MTP depths included, and
  one fp32 logits chunk of ``min(T, 2**28 / V)`` rows);
* ``all_to_all``: one MoE layer's dispatch and combine buffers under EP (routed rows x hidden,
  sent and received).

The peak (:attr:`MemoryPlan.total`) is measured in forward, not at the sum of all terms: the
previous step's gradients are freed (``zero_grad(set_to_none=True)``) before the loss buffers and
activations exist, and the backward frees activations while gradients fill. Validated against measured peaks (torch ``MemTracker``) on the CPU at world
1, 2 and 4 (``tests/parallel/test_parallel_memory_plan.py``; the README table).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from xt.parallel.checkpointing import checkpointed_layer_ids
from xt.parallel.config import ParallelConfig
from xt.parallel.discover import plan_for
from xt.parallel.plan import resolve
from xt.parallel.shard_math import local_shapes

__all__ = ["MemoryPlan", "ModelFacts", "model_facts", "expert_param_names", "layer_activation_elements", "plan_memory"]

GIB = 1024 ** 3


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per GPU by term (module docstring), their sum ``total``, and per-token activation
    bytes with and without recomputation of every layer."""

    params: int
    grads: int
    optimizer: int
    compute_copies: int
    fsdp_buffers: int
    activations: int
    loss: int
    all_to_all: int
    activation_per_token: float
    activation_per_token_full_ac: float
    tokens_per_rank: int
    head_grad: int = 0
    fsdp_grad_buffers: int = 0
    recompute: int = 0
    fsdp_layer_buffers: int = 0

    @property
    def total(self) -> int:
        """The predicted peak: what stays (parameters, optimizer state, compute copies, the FSDP2
        root) plus the largest of: the forward's end (saved activations and the loss buffers;
        the previous step's gradients are already freed), a MoE layer in forward (activations,
        all-to-all buffers, gathered layers), and the backward's end (every gradient; the head's
        fp32 weight gradient, or under FSDP2 the unsharded root and layer gradients that hold it;
        gathered layers; one checkpointed layer's recomputation)."""
        stays = self.params + self.optimizer + self.compute_copies + self.fsdp_buffers
        return stays + max(self.activations + self.loss,
                           self.activations + self.all_to_all + self.fsdp_layer_buffers,
                           self.grads + max(self.head_grad, self.fsdp_grad_buffers) + self.fsdp_layer_buffers
                           + self.recompute)

    def as_dict(self) -> dict:
        """The terms and ``total``, as plain numbers (for JSON)."""
        return {**asdict(self), "total": self.total}


def expert_param_names(model: nn.Module, plan=None) -> list[str]:
    """Qualified names of the stacked expert weights (dim 0 = E) of every MoE block of the plan."""
    plan = plan or plan_for(model, quiet=True)
    names = []
    for i, block in enumerate(plan.moe_blocks):
        experts = resolve(model, block.experts, f"moe_blocks[{i}].experts")
        names += [f"{block.experts}.{n}" for n, p in experts.named_parameters(recurse=False)
                  if p.dim() >= 1 and p.shape[0] == plan.num_experts]
    return names


def layer_activation_elements(layer: nn.Module, experts: nn.Module | None = None, top_k: int = 0) -> float:
    """Saved activation elements per token of one decoder layer (an estimate from its linears).

    Every ``nn.Linear`` outside the experts saves its input (linears of one parent module with the
    same input width share it: q/k/v, gate/up) and its output is saved by what consumes it (norm,
    activation, attention), except for the projections that feed the residual stream (``o_proj``,
    ``down_proj``: counted by input only, and always, since no other linear reads that input). Attention adds its
    rotated q and k. A norm (a module with a 1-D ``weight`` whose class name ends in ``Norm``)
    saves its input and its normalised copy (inside attention the input is a projection's output,
    already counted; per-head q/k norms count q / k once more). (Torch's SDPA math path, what the
    CPU runs, also saves the ``[H, T, T]`` probabilities: :func:`plan_memory` adds ``H * T`` per
    token with ``math_attention``.) Routed experts save
    per token ``K (D + 2F + F + D)`` (gathered rows, gate-up output, activation, expert output for
    the weighted combine) plus the fp32 router probabilities (``2 E``); an experts module whose
    activation saves more than one ``[rows, F]`` tensor says how many (``xt_activation_saves``:
    GPT-OSS's clamped SwiGLU, 5).
    """
    total = 0.0
    for _, parent in layer.named_modules():
        linears = [m for m in parent.children() if isinstance(m, nn.Linear)]
        if not linears:
            continue
        seen_inputs = set()
        for lin in linears:
            if experts is not None and any(lin is m for m in experts.modules()):
                continue
            if _feeds_residual(parent, lin):  # its input is its own tensor (attention / MLP output)
                total += lin.in_features
                continue
            if lin.in_features not in seen_inputs:
                total += lin.in_features
                seen_inputs.add(lin.in_features)
            total += lin.out_features
    for name, norm in layer.named_children():  # residual norms: fp32 input and normalised copy
        if _is_norm(norm):
            total += 2 * norm.weight.numel()
    attn = getattr(layer, "self_attn", None)
    if attn is not None:
        for name, norm in attn.named_children():
            if not _is_norm(norm):
                continue
            proj = getattr(attn, {"q_norm": "q_proj", "k_norm": "k_proj"}.get(name, ""), None)
            # its input is a projection's output (counted above): only the normalised copy is new
            total += proj.out_features if isinstance(proj, nn.Linear) else norm.weight.numel()
        for name in ("q_proj", "q_b_proj"):
            q = getattr(attn, name, None)
            if isinstance(q, nn.Linear):
                total += q.out_features
        for name in ("k_proj", "kv_b_proj"):
            k = getattr(attn, name, None)
            if isinstance(k, nn.Linear):
                total += k.out_features
    if experts is not None:
        E = next(iter(experts.parameters())).shape[0] if any(True for _ in experts.parameters()) else 0
        w1 = getattr(experts, "gate_up_proj", None)
        if w1 is not None:
            two_f, d = w1.shape[1], w1.shape[2]
            saves = getattr(experts, "xt_activation_saves", 1)  # [rows, F] tensors of the activation
            total += top_k * (d + two_f + saves * two_f // 2 + d)
        total += 2 * E
    return total


def _is_norm(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return type(m).__name__.endswith("Norm") and isinstance(w, torch.Tensor) and w.dim() == 1


def _heads(attn: nn.Module) -> int:
    for name in ("num_attention_heads", "num_heads", "n_heads"):
        if getattr(attn, name, None):
            return int(getattr(attn, name))
    return 0


def _kv_repeat(attn: nn.Module | None) -> int:
    """Elements per token that attention's math path adds by repeating grouped K and V to every
    query head (``q_proj`` wider than ``k_proj`` / ``v_proj``); 0 without GQA (e.g. MLA)."""
    q, k, v = (getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj"))
    if not all(isinstance(x, nn.Linear) for x in (q, k, v)):
        return 0
    return max(0, q.out_features - k.out_features) + max(0, q.out_features - v.out_features)


def _feeds_residual(parent: nn.Module, lin: nn.Linear) -> bool:
    """True for a block's output projection into the residual stream (HF names ``o_proj`` and
    ``down_proj``, which every XT family uses): its output is not saved."""
    names = [n for n, m in parent.named_children() if m is lin]
    return bool(names) and names[0] in ("o_proj", "down_proj")


def _tied_numel(model: nn.Module) -> set[str]:
    seen, dup = {}, set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            dup.add(name)
        seen.setdefault(id(p), name)
    return dup


@dataclass(frozen=True)
class ModelFacts:
    """What the planner reads from a (meta) model, computed once by :func:`model_facts`: shapes
    (tied parameters once), expert weight names, per-decoder-layer parameter numbers and saved
    activation elements per token (``layer_act``, without the attention-probability term, and
    ``layer_heads`` for it), the root's parameters, sizes, and the bf16-copy candidates."""

    shapes: dict
    experts: frozenset
    layer_dense: tuple
    layer_expert: tuple
    layer_act: tuple
    layer_heads: tuple
    root_numel: int
    hidden: int
    vocab: int
    top_k: int
    head_passes: int
    castable_numel: int
    moe_layers: int
    layer_kv_repeat: tuple = ()


def model_facts(model: nn.Module) -> ModelFacts:
    """Read :class:`ModelFacts` off `model` (best built on ``"meta"``)."""
    plan = plan_for(model, quiet=True)
    experts = frozenset(expert_param_names(model, plan))
    tied = _tied_numel(model)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if n not in tied}
    layer_paths = list(plan.decoder_layers)
    moe_by_layer = {}
    for blk in plan.moe_blocks:
        owner = next((lp for lp in layer_paths if blk.block.startswith(lp + ".")), None)
        if owner is not None:
            moe_by_layer[owner] = blk
    top_k = _config_value(model, "num_experts_per_tok", "top_k")
    dense, expert, act, heads, kv_repeat = [], [], [], [], []
    for lp in layer_paths:
        mine = {n: s for n, s in shapes.items() if n.startswith(lp + ".")}
        dense.append(sum(math.prod(s) for n, s in mine.items() if n not in experts))
        expert.append(sum(math.prod(s) for n, s in mine.items() if n in experts))
        blk = moe_by_layer.get(lp)
        layer = model.get_submodule(lp)
        act.append(layer_activation_elements(layer, model.get_submodule(blk.experts) if blk else None, top_k))
        attn = getattr(layer, "self_attn", None)
        heads.append(_heads(attn) if attn is not None else 0)
        kv_repeat.append(_kv_repeat(attn))
    in_layers = {n for n in shapes if any(n.startswith(lp + ".") for lp in layer_paths)}
    fp32_modules = {n for n, m in model.named_modules()
                    if getattr(m, "xt_fp32_weights", False) or isinstance(m, nn.Embedding)}
    castable = sum(math.prod(s) for n, s in shapes.items() if len(s) >= 2 and n.rpartition(".")[0] not in fp32_modules)
    return ModelFacts(shapes, experts, tuple(dense), tuple(expert), tuple(act), tuple(heads),
                      sum(math.prod(s) for n, s in shapes.items() if n not in in_layers),
                      _config_value(model, "hidden_size"), _config_value(model, "vocab_size"), top_k,
                      1 + _config_value(model, "mtp_layers"), castable, len(moe_by_layer), tuple(kv_repeat))


def plan_memory(model: nn.Module | ModelFacts, cfg: ParallelConfig, world: int, *, tokens_per_micro_batch: int,
                compute_bytes: int = 2, rank: int = 0, fsdp: bool | None = None,
                weight_cast: bool = True, math_attention: bool = False,
                doc_tokens: int | None = None) -> MemoryPlan:
    """Predict rank `rank`'s peak memory for one training step of `model` under `cfg`.

    Args:
        model: the model, best built on ``"meta"`` (only shapes are read; an XT family or any
            model xt.parallel can lay out), or its :func:`model_facts` (faster when planning many
            layouts).
        cfg: the ``[parallel]`` section (sizes, AC, ``param_dtype``, ``cpu_offload``).
        world: number of GPUs.
        tokens_per_micro_batch: tokens of one micro-batch of one data-parallel rank (split over
            ``sp_size`` ranks).
        compute_bytes: element size of activations: 2 under bf16 autocast, 4 in fp32.
        rank: which rank; rank 0 holds the largest shards (FSDP2's chunks are front-loaded).
        fsdp: whether FSDP2 is applied (default: ``world > 1``, as ``xt train`` does).
        weight_cast: bf16 compute copies of plain weights (``train.weight_cast = "per_step"``).
        math_attention: the core attention runs torch's math path (SDPA on the CPU, one call per
            packed document): it saves each document's ``[H, L, L]`` probabilities and K / V repeated
            to every query head; False for flash / varlen attention (CUDA), which saves neither.
        doc_tokens: the length L of the packed documents for `math_attention` (default: the whole
            micro-batch is one document).

    Returns:
        A :class:`MemoryPlan`.
    """
    f = model if isinstance(model, ModelFacts) else model_facts(model)
    fsdp = world > 1 if fsdp is None else fsdp
    local = local_shapes(f.shapes, f.experts, cfg, world, rank, fsdp=fsdp)
    local_numel = sum(math.prod(s) for s in local.values())
    params = grads = 4 * local_numel
    optimizer = 8 * local_numel
    if cfg.cpu_offload:
        params = grads = optimizer = 0
    compute_copies = 2 * f.castable_numel if (not fsdp and compute_bytes == 2 and weight_cast) else 0
    gathered_bytes = 2 if cfg.param_dtype == "bf16" else 4
    fsdp_buffers = fsdp_grad_buffers = fsdp_layer_buffers = 0
    if fsdp:
        biggest = max((d + e // cfg.ep_size for d, e in zip(f.layer_dense, f.layer_expert)), default=0)
        fsdp_buffers = f.root_numel * gathered_bytes
        fsdp_layer_buffers = 2 * biggest * gathered_bytes
        fsdp_grad_buffers = 4 * (f.root_numel + biggest)
    tokens = math.ceil(tokens_per_micro_batch / cfg.sp_size)
    span = min(tokens, doc_tokens or tokens)
    repeat = f.layer_kv_repeat or (0,) * len(f.layer_act)
    per_layer = [a + (h * span + r if math_attention else 0) for a, h, r in zip(f.layer_act, f.layer_heads, repeat)]
    ac = set(checkpointed_layer_ids(len(per_layer), cfg.activation_checkpointing,
                                    cfg.activation_checkpointing_every_n))
    kept = sum(4 * f.hidden if i in ac else compute_bytes * e for i, e in enumerate(per_layer))
    recompute = compute_bytes * max((e for i, e in enumerate(per_layer) if i in ac), default=0)
    activation_per_token = compute_bytes * sum(per_layer) + 0.0
    activation_full_ac = 4.0 * f.hidden * len(per_layer) + compute_bytes * max(per_layer, default=0)
    chunk = max(1, min(tokens, (1 << 28) // max(f.vocab, 1)))
    head_grad = 4 * f.vocab * f.hidden
    loss = int(f.head_passes * (tokens * f.hidden * (compute_bytes + 4) + head_grad) + 4 * chunk * f.vocab)
    all_to_all = int(4 * tokens * f.top_k * f.hidden * compute_bytes) if cfg.ep_size > 1 and f.moe_layers else 0
    return MemoryPlan(params, grads, optimizer, compute_copies, fsdp_buffers, int(tokens * kept), loss, all_to_all,
                      activation_per_token, activation_full_ac, tokens, head_grad, fsdp_grad_buffers,
                      int(tokens * recompute), fsdp_layer_buffers)


def _config_value(model: nn.Module, *names: str, default: int = 0) -> int:
    cfg = getattr(model, "config", None)
    for n in names:
        v = getattr(cfg, n, None)
        if v:
            return int(v)
    return default
