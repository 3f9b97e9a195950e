"""Test cases run identically by the single-process reference and by every rank of a pool.

A spec (dict) holds: ``model`` (ToyConfig kwargs), ``seed``, ``skew``, ``docs[step][dp]`` (document
lengths of each data-parallel rank's micro-batch per step), ``layout`` (ParallelConfig kwargs),
``lr``, ``max_norm``, optionally ``device`` ("cpu" default; "cuda" = this rank's current GPU, as
benchmarks/multi_gpu/run.py runs them over NCCL). Both sides return ``{"loss": [...], "grad_norm": [...], "grads": {...}
(step 0, full tensors), "params": {...} (after the last step)}``.
"""
from __future__ import annotations

import torch

from xt.parallel.sp_batch import IGNORE_INDEX


def make_batch(seed: int, doc_lens: list[int], vocab: int) -> dict:
    """Packed batch per docs/contracts.md: pre-shifted labels, -100 at each document's last token
    and on ~1/4 of the other tokens (masked turns)."""
    g = torch.Generator().manual_seed(seed)
    ids, labels, pos = [], [], []
    for n in doc_lens:
        doc = torch.randint(0, vocab, (n + 1,), generator=g)
        lab = doc[1:].clone()
        lab[torch.rand(n, generator=g) < 0.25] = IGNORE_INDEX
        lab[-1] = IGNORE_INDEX
        ids.append(doc[:-1]); labels.append(lab); pos.append(torch.arange(n))
    cu = torch.zeros(len(doc_lens) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(doc_lens).cumsum(0)
    return {"input_ids": torch.cat(ids), "labels": torch.cat(labels), "position_ids": torch.cat(pos),
            "cu_seqlens": cu, "max_seqlen": max(doc_lens)}


def add_images(batch: dict, seed: int, vl: dict) -> dict:
    """Give every document of at least ``tokens + 2`` tokens one image: ``vl["tokens"]`` image tokens
    (``vl["image_token_id"]``) from its second position on, never targets (nor the token before
    them), and ``pixel_values [N, 3, S, S]`` (S = ``vl["image_size"]``) drawn from `seed`."""
    g = torch.Generator().manual_seed(seed)
    ids, labels, cu = batch["input_ids"].clone(), batch["labels"].clone(), batch["cu_seqlens"].tolist()
    ids[ids == vl["image_token_id"]] = 0  # random text that drew the image token
    labels[labels == vl["image_token_id"]] = 0
    n, k = 0, vl["tokens"]
    for a, b in zip(cu, cu[1:]):
        if b - a >= k + 2:
            ids[a + 1:a + 1 + k] = vl["image_token_id"]
            labels[a:a + 1 + k] = IGNORE_INDEX
            n += 1
    px = torch.randn(n, 3, vl["image_size"], vl["image_size"], generator=g)
    return {**batch, "input_ids": ids, "labels": labels, "pixel_values": px}


def _device(spec: dict) -> torch.device:
    """``spec["device"]``: "cpu" (default) or "cuda" (the current GPU of this process)."""
    if spec.get("device", "cpu") == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _batches(spec: dict, step: int) -> list[dict]:
    out = _cpu_batches(spec, step)
    dev = _device(spec)
    if dev.type == "cpu":
        return out
    return [{k: v.to(dev) if torch.is_tensor(v) else v for k, v in b.items()} for b in out]


def _cpu_batches(spec: dict, step: int) -> list[dict]:
    vocab = spec["model"].get("text_config", spec["model"]).get("vocab_size")
    out = [make_batch(spec["seed"] * 1000 + step * 10 + r, lens, vocab) for r, lens in enumerate(spec["docs"][step])]
    if spec.get("vl"):
        out = [add_images(b, spec["seed"] * 1000 + step * 10 + r, spec["vl"]) for r, b in enumerate(out)]
    return out


def _optimizer(model, spec):
    """AdamW by default. ``spec["optim"] == "sgd"``: SGD with momentum, whose update is linear in the
    gradient. Adam's first steps are ~lr * sign(grad) per element, so an element whose true gradient
    is ~0 (up to fp32 rounding of a cancelling sum) can move by a visible amount in either run:
    randomly drawn cases (e.g. a first step with no label tokens) use SGD to keep the 1e-5 bound
    meaningful; fixed cases and the HF test use AdamW."""
    if spec.get("optim", "adamw") == "sgd":
        return torch.optim.SGD(model.parameters(), lr=spec["lr"], momentum=0.9, weight_decay=0.1)
    return torch.optim.AdamW(model.parameters(), lr=spec["lr"], betas=(0.9, 0.95), weight_decay=0.1)


def _dtype(spec: dict) -> torch.dtype:
    return getattr(torch, spec.get("dtype", "float32"))


def build_model(spec: dict):
    """The test toy (``spec["builder"]`` "toy", default) or XT's own Qwen3-MoE ("xt_qwen3")."""
    if spec.get("builder") == "xt_registry":  # any XT family from an HF config dict
        from xt.models.registry import build_model as build_registered
        from xt.models.section import freeze_parts
        torch.manual_seed(spec["seed"])
        return freeze_parts(build_registered(spec["model"]).to(_dtype(spec)), tuple(spec.get("freeze", ())))
    if spec.get("builder", "toy") == "xt_qwen3":
        from xt.models.qwen3.config import Qwen3Config
        from xt.models.qwen3.model import Qwen3ForCausalLM
        torch.manual_seed(spec["seed"])
        return Qwen3ForCausalLM(Qwen3Config(**spec["model"])).to(_dtype(spec))
    from parallel_toy_moe import ToyConfig, build_toy
    return build_toy(ToyConfig(**spec["model"]), spec["seed"], spec["skew"]).to(_device(spec), _dtype(spec))


def _reference_steps(model, spec: dict, batches_of, loss_sum) -> dict:
    """The single-process reference loop: per step, every micro-batch's ``loss_sum`` over the step's
    label tokens, accumulated; clip; optimizer step. Records loss, grad norm, step-0 gradients and
    the final parameters.

    ``loss_sum(model, batch)`` returns the summed CE, or ``(loss_sum, aux_loss)``: then the aux term
    enters as the engine adds it, ``aux / (micro-batches x ranks)``, which is ``aux / len(batches)``
    when every batch of the step is one rank's only micro-batch and no SP rank splits it (the only
    layouts where a per-micro-batch aux loss is split-invariant: ``spec["aux_loss"]``)."""
    opt = _optimizer(model, spec)
    out = {"loss": [], "grad_norm": []}
    for step in range(len(spec["docs"])):
        batches = batches_of(spec, step)
        n_tok = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
        total = 0.0
        for b in batches:
            got = loss_sum(model, b)
            ce, aux = got if isinstance(got, tuple) else (got, None)
            loss = ce / max(n_tok, 1) + (aux / len(batches) if aux is not None else 0.0)
            loss.backward()
            total += loss.item()
        out["loss"].append(total)
        if step == 0:
            out["grads"] = {k: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                            for k, p in model.named_parameters()}
        out["grad_norm"].append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), spec["max_norm"])))
        opt.step()
        opt.zero_grad()
    out["params"] = {k: p.detach().clone() for k, p in model.named_parameters()}
    return out


def reference_toy(spec: dict) -> dict:
    """Single process, no torch.distributed: every dp micro-batch of a step accumulated.

    ``spec["layout"]["capacity_factor"]`` applies per micro-batch here, which is what EP does per
    source rank when ``sp_size == 1`` (each rank's tokens are one micro-batch)."""
    from xt.parallel.expert_parallel import AllToAllDispatcher, capacity_metrics
    model = build_model(spec)  # on spec["device"] (toy builder)
    cf = spec["layout"].get("capacity_factor")
    if cf is not None:
        for m in model.modules():
            if hasattr(m, "dispatcher"):
                m.dispatcher = AllToAllDispatcher(m.dispatcher.num_experts, None, cf)
    if spec.get("aux_loss"):
        assert spec["layout"].get("sp_size", 1) == 1 and spec.get("micro", 1) == 1, "aux loss is per micro-batch"
        out = _reference_steps(model, spec, _batches, lambda m, b: (lambda o: (o.loss_sum, o.aux_loss))(m(**b)))
    else:
        out = _reference_steps(model, spec, _batches, lambda m, b: m(**b).loss_sum)
    out["dropped"] = capacity_metrics(model)["moe_dropped_rows"]
    return out


def _meshes(spec: dict, state: dict):
    from xt.parallel import ParallelConfig, build_meshes
    cfg = ParallelConfig(**spec["layout"])
    key = (cfg.fsdp_size, cfg.hsdp_replicate, cfg.ep_size, cfg.sp_size)
    if key not in state.setdefault("meshes", {}):
        m = spec["model"].get("text_config", spec["model"])  # a vision-language model: its LM's sizes
        experts = m.get("num_experts") or m.get("n_routed_experts") or m.get("num_local_experts")
        state["meshes"][key] = build_meshes(cfg, _device(spec).type, num_experts=experts,
                                            num_attention_heads=m["num_attention_heads"],
                                            num_key_value_heads=m.get("num_key_value_heads"))
    meshes = state["meshes"][key]
    meshes.cfg = cfg  # same ranks, this case's AC / precision options
    return cfg, meshes


def _forward_backward(model, ctx, spec: dict, step: int, micro: int) -> float:
    """This rank's micro-batches of `step` (``docs[step][dp*micro:(dp+1)*micro]``) forward and
    backward, gradient sync off for all but the last (as the engine does); returns the global loss."""
    from xt.core.engine.loss import count_label_tokens, micro_batch_objective
    mine = _batches(spec, step)[ctx.dp_rank * micro:(ctx.dp_rank + 1) * micro]
    mbs = [ctx.shard_batch(b) for b in mine]
    n_tok = ctx.all_reduce_sum(count_label_tokens(mbs, _device(spec)))
    total = torch.zeros((), dtype=_dtype(spec), device=_device(spec))
    for m, mb in enumerate(mbs):
        ctx.set_grad_sync(model, m == micro - 1)
        loss = micro_batch_objective(model(**mb), n_tok, micro, ctx.world_size)
        loss.backward()
        total += loss.detach()
    return float(ctx.all_reduce_sum(total))


def run_toy(spec: dict, state: dict) -> dict:
    """One rank of the distributed run of `spec` (collective over the pool's world).

    With ``spec["micro"] = M`` each data-parallel rank takes micro-batches ``docs[step][dp*M:(dp+1)*M]``
    and accumulates them with gradient sync off for all but the last (as the engine does); the loss
    follows the engine's convention (``xt.core.engine.loss``).
    """
    import torch.distributed as dist

    from xt.core.distributed import DistContext
    from xt.parallel import parallelize
    from xt.parallel.gather import gather_full
    cfg, meshes = _meshes(spec, state)
    model = build_model(spec)
    model, ctx = parallelize(model, cfg, device_type=_device(spec).type, meshes=meshes)
    assert isinstance(ctx, DistContext)
    opt = _optimizer(model, spec)
    micro = spec.get("micro", 1)
    out = {"loss": [], "grad_norm": []}
    for step in range(len(spec["docs"])):
        out["loss"].append(_forward_backward(model, ctx, spec, step, micro))
        if step == 0:
            out["grads"] = gather_full(model, meshes.ep_group, grads=True)
        out["grad_norm"].append(float(ctx.clip_grad_norm_(model.parameters(), spec["max_norm"])))
        opt.step()
        opt.zero_grad()
    out["params"] = gather_full(model, meshes.ep_group)
    from xt.parallel.expert_parallel import capacity_metrics
    from xt.parallel.fsdp import EP_ATTR
    out["dropped"] = int(ctx.all_reduce_sum(torch.tensor(capacity_metrics(model)["moe_dropped_rows"], device=_device(spec))))
    out["ep_sliced"] = sorted(n for n, m in model.named_modules() if hasattr(m, EP_ATTR))
    out["dispatchers"] = sorted({type(m).__name__ for m in model.modules() if hasattr(m, "combine")})
    dist.barrier()
    return out


# --- Hugging Face transformers Qwen3MoeForCausalLM (reuse outside XT) --------------------------------

def build_hf(spec: dict):
    """Tiny HF Qwen3-MoE, eager attention (the stock reference), in ``spec["dtype"]`` (fp32 default)."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    cfg = Qwen3MoeConfig(**spec["hf_config"], attn_implementation="eager")
    torch.manual_seed(spec["seed"])
    return Qwen3MoeForCausalLM(cfg).to(_dtype(spec))


def _hf_loss_sum(model, batch: dict, packed_kwargs: dict | None) -> torch.Tensor:
    """Summed CE. Without `packed_kwargs` (stock HF) each document runs as its own sequence: stock
    transformers does not mask attention between documents packed into one row."""
    if packed_kwargs is not None:
        logits = model(**packed_kwargs).logits[0]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return torch.nn.functional.cross_entropy(logits, batch["labels"], ignore_index=IGNORE_INDEX, reduction="sum")
    cu = batch["cu_seqlens"].tolist()
    total = 0.0
    for s, e in zip(cu[:-1], cu[1:]):
        logits = model(input_ids=batch["input_ids"][None, s:e], position_ids=batch["position_ids"][None, s:e]).logits[0]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        total = total + torch.nn.functional.cross_entropy(logits, batch["labels"][s:e], ignore_index=IGNORE_INDEX,
                                                          reduction="sum")
    return total


def _hf_batches(spec: dict, step: int) -> list[dict]:
    return [make_batch(spec["seed"] * 1000 + step * 10 + r, lens, spec["hf_config"]["vocab_size"])
            for r, lens in enumerate(spec["docs"][step])]


def reference_hf(spec: dict) -> dict:
    """Stock HF model (eager attention, per-expert loop) in one process, document by document."""
    model = build_hf(spec)
    return _reference_steps(model, spec, _hf_batches, lambda m, b: _hf_loss_sum(m, b, None))


def run_hf(spec: dict, state: dict) -> dict:
    """HF model with xt.parallel applied from outside: experts adapter + EP, Ulysses, AC, FSDP2."""
    import torch.distributed as dist

    from xt.parallel import ParallelConfig, build_meshes, parallelize
    from xt.parallel.gather import gather_full
    from xt.parallel.hf_qwen3_moe import adapt_hf_moe_experts, enable_varlen_attention, hf_packed_inputs
    cfg = ParallelConfig(**spec["layout"])
    model = build_hf(spec)
    key = ("hf", cfg.fsdp_size, cfg.hsdp_replicate, cfg.ep_size, cfg.sp_size)
    if key not in state.setdefault("meshes", {}):
        c = model.config
        state["meshes"][key] = build_meshes(cfg, "cpu", num_experts=c.num_experts,
                                            num_attention_heads=c.num_attention_heads,
                                            num_key_value_heads=c.num_key_value_heads)
    meshes = state["meshes"][key]
    meshes.cfg = cfg
    adapt_hf_moe_experts(model)
    enable_varlen_attention(model)
    model, ctx = parallelize(model, cfg, device_type="cpu", meshes=meshes)
    opt = _optimizer(model, spec)
    out = {"loss": [], "grad_norm": []}
    for step in range(len(spec["docs"])):
        batch = ctx.shard_batch(_hf_batches(spec, step)[ctx.dp_rank])
        n_tok = ctx.all_reduce_sum((batch["labels"] != IGNORE_INDEX).sum())
        loss = _hf_loss_sum(model, batch, hf_packed_inputs(batch)) / n_tok.clamp(min=1).float()
        loss.backward()
        out["loss"].append(float(ctx.all_reduce_sum(loss.detach().clone())))
        if step == 0:
            out["grads"] = gather_full(model, meshes.ep_group, grads=True)
        out["grad_norm"].append(float(ctx.clip_grad_norm_(model.parameters(), spec["max_norm"])))
        opt.step()
        opt.zero_grad()
    out["params"] = gather_full(model, meshes.ep_group)
    dist.barrier()
    return out


# --- the all-to-all dispatcher alone ------------------------------------------------------------------

def dispatch_inputs(spec: dict, rank: int):
    """Rank `rank`'s tokens ``x [T_r, D]``, ``ids [T_r, K]``, ``w [T_r, K]`` fp32 and output probe."""
    g = torch.Generator().manual_seed(spec["seed"] * 100 + rank)
    T, K, E, D = spec["tokens"][rank], spec["top_k"], spec["num_experts"], spec["hidden"]
    x = torch.randn(T, D, generator=g)
    if spec["skew"] == "one_expert":  # every token's first choice is expert 0
        rows = [torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(E - 1, generator=g)[:K - 1] + 1])
                for _ in range(T)]
    else:
        rows = [torch.randperm(E, generator=g)[:K] for _ in range(T)]
    ids = torch.stack(rows) if rows else torch.zeros(0, K, dtype=torch.long)
    w = torch.rand(T, K, generator=g)
    probe = torch.randn(T, D, generator=g)
    return x, ids, w, probe


def expert_weights(spec: dict) -> torch.Tensor:
    g = torch.Generator().manual_seed(spec["seed"])
    return torch.randn(spec["num_experts"], spec["hidden"], spec["hidden"], generator=g)


def _experts(x, W, counts):
    from xt.kernels.moe import grouped_gemm
    return grouped_gemm(x, W, counts)


def reference_dispatch(spec: dict, world: int) -> dict:
    """Each rank's tokens through a local dispatcher with all experts (capacity applies per source rank)."""
    from xt.parallel.expert_parallel import AllToAllDispatcher
    W = expert_weights(spec).requires_grad_(True)
    ys, xgrads = [], []
    for r in range(world):
        x, ids, w, probe = dispatch_inputs(spec, r)
        x.requires_grad_(True)
        d = AllToAllDispatcher(spec["num_experts"], None, spec["capacity_factor"])
        xs, counts, ctx = d.dispatch(x, ids, w)
        y = d.combine(_experts(xs, W, counts), ctx)
        (y * probe).sum().backward()
        ys.append(y.detach())
        xgrads.append(x.grad if x.grad is not None else torch.zeros_like(x))
    return {"y": ys, "x_grad": xgrads, "w_grad": W.grad}


def run_dispatch(spec: dict, state: dict) -> dict:
    """EP over the whole world: each rank owns E / world experts."""
    import torch.distributed as dist

    from xt.parallel.expert_parallel import AllToAllDispatcher
    rank, world = dist.get_rank(), dist.get_world_size()
    El = spec["num_experts"] // world
    W = expert_weights(spec)[rank * El:(rank + 1) * El].clone().requires_grad_(True)
    x, ids, w, probe = dispatch_inputs(spec, rank)
    x.requires_grad_(True)
    d = AllToAllDispatcher(spec["num_experts"], dist.group.WORLD, spec["capacity_factor"])
    xs, counts, ctx = d.dispatch(x, ids, w)
    y = d.combine(_experts(xs, W, counts), ctx)
    (y * probe).sum().backward()
    mine = {"y": y.detach(), "x_grad": x.grad if x.grad is not None else torch.zeros_like(x),
            "w_grad": W.grad if W.grad is not None else torch.zeros_like(W), "dropped": d.dropped_rows}
    every = [None] * world
    dist.all_gather_object(every, mine)
    return {"y": [e["y"] for e in every], "x_grad": [e["x_grad"] for e in every],
            "w_grad": torch.cat([e["w_grad"] for e in every]), "dropped": [e["dropped"] for e in every]}


# --- distributed checkpoint (DCP) round trip across layouts -----------------------------------------

def run_dcp(spec: dict, state: dict) -> dict:
    """Train one step under layout A, save model + optimizer with DCP (as xt.core does), load into a
    fresh model under layout B, then take one more identical step with both; return full params."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from xt.parallel import parallelize
    from xt.parallel.gather import gather_full

    def build(layout):
        cfg, meshes = _meshes(dict(spec, layout=layout), state)
        model, ctx = parallelize(build_model(spec), cfg, device_type="cpu", meshes=meshes)
        return model, ctx, _optimizer(model, spec), meshes

    def step(model, ctx, opt, s):
        batch = ctx.shard_batch(_batches(spec, s)[ctx.dp_rank])
        n_tok = ctx.all_reduce_sum((batch["labels"] != IGNORE_INDEX).sum())
        (model(**batch).loss_sum / n_tok.clamp(min=1).float()).backward()
        opt.step()
        opt.zero_grad()

    model_a, ctx_a, opt_a, meshes_a = build(spec["layout_a"])
    step(model_a, ctx_a, opt_a, 0)
    msd, osd = get_state_dict(model_a, opt_a)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=spec["dir"])
    model_b, ctx_b, opt_b, meshes_b = build(spec["layout_b"])
    msd_b, osd_b = get_state_dict(model_b, opt_b)
    dcp.load({"model": msd_b, "optim": osd_b}, checkpoint_id=spec["dir"])
    set_state_dict(model_b, opt_b, model_state_dict=msd_b, optim_state_dict=osd_b)
    out = {"saved": gather_full(model_a), "loaded": gather_full(model_b)}
    step(model_a, ctx_a, opt_a, 1)
    step(model_b, ctx_b, opt_b, 1)
    out["next_a"], out["next_b"] = gather_full(model_a), gather_full(model_b)
    dist.barrier()
    return out


def _dcp_layout(spec: dict, state: dict, layout: dict):
    from xt.parallel import parallelize
    cfg, meshes = _meshes(dict(spec, layout=layout), state)
    model, ctx = parallelize(build_model(spec), cfg, device_type=_device(spec).type, meshes=meshes)
    return model, ctx, _optimizer(model, spec)


def _dcp_next_step(model, ctx, opt, spec: dict, micro: int) -> dict:
    """Step ``len(docs) - 1`` (the step after the checkpoint): its loss, grad norm and the params after it."""
    from xt.parallel.gather import gather_full
    loss = _forward_backward(model, ctx, spec, len(spec["docs"]) - 1, micro)
    norm = float(ctx.clip_grad_norm_(model.parameters(), spec["max_norm"]))
    opt.step()
    opt.zero_grad()
    return {"next_loss": loss, "next_grad_norm": norm, "next_params": gather_full(model)}


def run_dcp_save(spec: dict, state: dict) -> dict:
    """The saving side of a resume on another world size: every step of ``docs`` but the last
    (one micro-batch per rank), DCP save of model + optimizer to ``spec["dir"]``, then the last step
    (the resuming run's first). ``spec["layout"]`` is this world's layout."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    model, ctx, opt = _dcp_layout(spec, state, spec["layout"])
    for step in range(len(spec["docs"]) - 1):
        _forward_backward(model, ctx, spec, step, 1)
        ctx.clip_grad_norm_(model.parameters(), spec["max_norm"])
        opt.step()
        opt.zero_grad()
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=spec["dir"])
    out = _dcp_next_step(model, ctx, opt, spec, 1)
    dist.barrier()
    return out


def run_dcp_resume(spec: dict, state: dict) -> dict:
    """The resuming side: a world of ``1 / spec["micro"]`` of the saver's ranks loads ``spec["dir"]``
    into ``spec["layout"]`` and takes the last step of ``docs`` with ``micro`` micro-batches per rank
    (the same global batch as the saver's one per rank)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    model, ctx, opt = _dcp_layout(spec, state, spec["layout"])
    msd, osd = get_state_dict(model, opt)
    dcp.load({"model": msd, "optim": osd}, checkpoint_id=spec["dir"])
    set_state_dict(model, opt, model_state_dict=msd, optim_state_dict=osd)
    out = _dcp_next_step(model, ctx, opt, spec, spec["micro"])
    dist.barrier()
    return out


# --- HF export of a laid-out model (xt.parallel.exporter with xt.models.save_pretrained) ------------

def export_model(spec: dict):
    """The registry model of `spec` with its persistent buffers (DeepSeek-V3's router bias) set to
    seeded non-zero values, so an export that drops them differs from the plain model's."""
    model = build_model(spec)
    g = torch.Generator().manual_seed(spec["seed"] + 1)
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            b.copy_(torch.rand(b.shape, generator=g))
    return model


def run_export(spec: dict, state: dict) -> dict:
    """Lay out `spec`'s model, then export it through the run's hook: every rank gathers, rank 0
    writes the HF folder ``spec["dir"]``."""
    from xt.models import save_pretrained
    from xt.parallel import exporter, parallelize
    cfg, meshes = _meshes(spec, state)
    model, ctx = parallelize(export_model(spec), cfg, device_type="cpu", meshes=meshes)
    exporter(save_pretrained, ctx)(model, spec["dir"])
    return {"world_size": ctx.world_size}
