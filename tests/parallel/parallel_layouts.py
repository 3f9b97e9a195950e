"""Enumerate valid layouts and compare distributed results with the single-process reference."""
from __future__ import annotations

import torch

TOL = 1e-5  # fp32 relative error ||a - b|| / ||b|| (docs/architecture.md, Numerics)
TOL_F64 = 1e-10  # the same in float64 (measured ~1e-14 between layouts; test_parallel_equivalence)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def valid_layouts(world: int, num_experts: int, heads: int, kv_heads: int) -> list[dict]:
    """Every (hsdp_replicate, fsdp_size, ep_size, sp_size) that `validate_layout` accepts."""
    out = []
    for r in divisors(world):
        fsdp = world // r
        for ep in divisors(fsdp):
            if num_experts % ep:
                continue
            for sp in divisors(world):
                if heads % sp or (kv_heads % sp and sp % kv_heads):
                    continue
                out.append(dict(hsdp_replicate=r, fsdp_size=fsdp, ep_size=ep, sp_size=sp))
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    nb = b.norm().item()
    return (a - b).norm().item() / nb if nb > 0 else (a - b).norm().item()


#: a gradient tensor is measured against at least this share of the whole model's gradient norm
GRAD_FLOOR = 0.1


def errors(got: dict, ref: dict) -> dict[str, tuple[float, str]]:
    """Every compared quantity's error against `ref`: ``{name: (error, detail)}``.

    ``loss[i]`` / ``grad_norm[i]``: relative difference of the scalars. Parameters (``params.NAME``):
    `rel_err`. A gradient tensor (``grads.NAME``) is measured as ``||a - b|| / max(||b||,
    GRAD_FLOOR * ||all of ref's gradients||)``: a tensor whose true gradient is exactly zero (e.g.
    q/k of a layer where every loss token attends only to itself) holds rounding noise in one run
    (~1e-8, differing by CPU kernel) and exact zeros in another, and noise over noise is no
    measure. A sharding error on a tensor with a real gradient is still an O(1) relative error;
    only gradients below ~1e-6 of the model's are not resolved. A shape mismatch is ``inf``.
    """
    out: dict[str, tuple[float, str]] = {}
    for key in ("loss", "grad_norm"):
        for i, (a, b) in enumerate(zip(got[key], ref[key], strict=True)):
            out[f"{key}[{i}]"] = (abs(a - b) / max(abs(b), 1e-12), f"{a} vs {b}")
    for group in ("grads", "params"):
        assert set(got[group]) == set(ref[group]), (sorted(got[group]), sorted(ref[group]))
        floor = 0.0
        if group == "grads":
            floor = GRAD_FLOOR * sum(float(t.double().norm()) ** 2 for t in ref[group].values()) ** 0.5
        for name, b in ref[group].items():
            a = got[group][name]
            if a.shape != b.shape:
                out[f"{group}.{name}"] = (float("inf"), f"shape {tuple(a.shape)} vs {tuple(b.shape)}")
                continue
            diff = float((a.double().cpu() - b.double().cpu()).norm())
            nb = float(b.double().norm())
            e = diff / max(nb, floor) if max(nb, floor) > 0 else diff
            out[f"{group}.{name}"] = (e, f"rel err {e:.2e} (|ref| {nb:.2e})")
    return out


def mismatches(got: dict, ref: dict, tol: float = TOL) -> list[str]:
    """Human-readable list of every quantity of `errors` whose error exceeds `tol`."""
    return [f"{name}: {detail}" for name, (e, detail) in errors(got, ref).items() if e > tol]
