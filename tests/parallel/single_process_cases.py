"""The ``[parallel]`` section on one process (no torchrun): shared by the in-process tests and by
the subprocess that checks the FSDP2-at-world-size-1 keys (it creates a process group, so it runs
in its own interpreter: ``python single_process_cases.py OUT.pt``).

Each case applies one key to XT's own tiny Qwen3-MoE with `xt.parallel.single.parallelize_single`
and measures its effect on one training step against the same model without the key.
"""
from __future__ import annotations

import sys

import torch

MODEL = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
             norm_topk_prob=True, router_aux_loss_coef=0.0, initializer_range=0.2, model_type="qwen3_moe")


def build(seed: int = 0):
    """The tiny model, fp32, seeded."""
    from xt.models import build_model
    torch.manual_seed(seed)
    return build_model(dict(MODEL)).float()


def batch(tokens: int = 48, seed: int = 1) -> dict:
    """One packed micro-batch of three documents (docs/contracts.md)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, MODEL["vocab_size"], (tokens + 1,), generator=g)
    lens = [tokens // 2, tokens // 4, tokens - tokens // 2 - tokens // 4]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    labels = ids[1:].clone()
    labels[cu[1:] - 1] = -100
    pos = torch.cat([torch.arange(n) for n in lens])
    return {"input_ids": ids[:-1], "labels": labels, "position_ids": pos, "cu_seqlens": cu, "max_seqlen": max(lens)}


def saved_bytes(call):
    """``(bytes autograd keeps for backward while `call()` runs, its result)``: what activation
    checkpointing cuts."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = call()
    return total, out


def saved_activation_bytes(model, b: dict) -> tuple[int, torch.Tensor]:
    """Bytes autograd keeps for backward during one forward, and the summed loss."""
    return saved_bytes(lambda: model(**b).loss_sum)


def step(model, b: dict) -> dict:
    """Forward + backward; the loss and every full gradient (DTensors gathered)."""
    from torch.distributed.tensor import DTensor
    loss = model(**b).loss_sum
    loss.backward()
    full = lambda t: t.full_tensor() if isinstance(t, DTensor) else t  # noqa: E731
    return {"loss": loss.detach().clone(), "grads": {n: full(p.grad).detach().clone() for n, p in model.named_parameters()}}


def fsdp_cases(device: str = "cpu") -> dict:
    """Every FSDP2-only key on a world-size-1 process group that `parallelize_single` creates
    (gloo on "cpu", NCCL on "cuda")."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from xt.parallel import ParallelConfig
    from xt.parallel.single import parallelize_single
    b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch().items()}
    ref = step(build().to(device), b)
    out = {"ref": {"loss": ref["loss"].cpu(), "grads": {k: v.cpu() for k, v in ref["grads"].items()}},
           "initialised_before": dist.is_initialized()}

    def run(**kw):
        model, ctx = parallelize_single(build().to(device), ParallelConfig(**kw), device_type=device)
        seen = {}
        q = model.model.layers[0].self_attn.q_proj
        q.register_forward_pre_hook(lambda m, a: seen.setdefault("compute_dtype", m.weight.dtype) and None)
        r = step(model, b)
        r["grads"] = {k: v.cpu() for k, v in r["grads"].items()}
        r["loss"] = r["loss"].cpu()
        r["compute_dtype"] = seen["compute_dtype"]
        r["master_dtype"] = q.weight.dtype
        r["world_size"] = ctx.world_size
        r["param_devices"] = sorted({(p.to_local() if isinstance(p, DTensor) else p).device.type
                                     for p in model.parameters()})
        model.zero_grad(set_to_none=True)
        model(**b)  # forward only: are the layer's parameters still gathered afterwards?
        r["sharded_after_forward"] = isinstance(model.model.layers[0].self_attn.q_proj.weight, DTensor)
        return r

    out["param_dtype"] = run(param_dtype="bfloat16")
    out["reduce_dtype"] = run(reduce_dtype="bfloat16")
    out["reshard_true"] = run(cpu_offload=True)  # FSDP2 with the default reshard_after_forward=True
    out["reshard_false"] = run(reshard_after_forward=False)
    out["cpu_offload"] = out["reshard_true"]
    return out


if __name__ == "__main__":
    torch.save(fsdp_cases(sys.argv[2] if len(sys.argv) > 2 else "cpu"), sys.argv[1])
