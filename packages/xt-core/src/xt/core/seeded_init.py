"""Layout-invariant random initialisation: any slice of rows of a parameter, without the rest.

A parameter of global shape ``[R, ...]`` is cut along dim 0 into fixed *chunks* of
``rows_per_chunk(shape)`` rows (about ``CHUNK_ELEMENTS`` values each; a function of the global
shape only). Chunk c is drawn from its own CPU generator seeded with
``chunk_seed(base_seed, name, c)`` (a BLAKE2b hash of the run's base seed, the parameter's
qualified name and c). So rows ``[start, stop)`` are produced by drawing only the chunks that
overlap them and keeping those rows, and every process that owns a slice (an FSDP2 shard, an
expert-parallel slice, or the whole tensor on one process) gets exactly the values of the same
rows of the full tensor, bit for bit, whatever the layout. Every sharding XT applies (FSDP2's
``Shard(0)``, expert parallelism over the stacked expert dim 0, both combined) cuts dim 0 into
contiguous row ranges, so rows are the only unit needed.

Values are drawn on the CPU (the same on every device type) in float32 and cast to the target
dtype. This is XT's own scheme (docs/architecture.md, Meta-device construction); it is not the
stream ``torch.manual_seed`` + ``nn.init.normal_`` would give.
"""
from __future__ import annotations

import hashlib
import math
from typing import NamedTuple

import torch

__all__ = ["InitRule", "CHUNK_ELEMENTS", "draw_init_seed", "chunk_seed", "rows_per_chunk", "init_rows", "init_rows_"]

#: values per chunk (about 16 MB in float32): large enough that seeding costs nothing, small enough
#: that a rank draws at most two chunks it does not keep per parameter.
CHUNK_ELEMENTS = 1 << 22


class InitRule(NamedTuple):
    """How one parameter or buffer starts: ``kind`` is ``"normal"`` (mean 0, ``std``), ``"zeros"``,
    ``"ones"`` or ``"constant"`` (every element ``value``, e.g. InternViT's layer scale 0.1)."""

    kind: str
    std: float = 0.0
    value: float = 0.0


def draw_init_seed() -> int:
    """One draw from the global CPU generator (so ``torch.manual_seed`` / ``seed_everything``
    decides it): the base seed a model stores and derives every parameter's values from.

    Returns:
        An int in ``[0, 2**62)``.
    """
    return int(torch.randint(0, 2 ** 62, (1,), device="cpu").item())


def chunk_seed(base_seed: int, name: str, chunk: int) -> int:
    """The generator seed of chunk `chunk` of parameter `name` (63-bit, BLAKE2b of all three)."""
    digest = hashlib.blake2b(f"{base_seed}:{name}:{chunk}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2 ** 63 - 1)


def rows_per_chunk(shape: tuple[int, ...] | torch.Size) -> int:
    """Rows of dim 0 per chunk for a tensor of global `shape` (at least 1; a 0-d tensor is one row)."""
    row = math.prod(shape[1:]) if len(shape) > 1 else 1
    return max(1, CHUNK_ELEMENTS // max(row, 1))


def init_rows(rule: InitRule, name: str, shape: tuple[int, ...] | torch.Size, start: int, stop: int,
              base_seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows ``[start, stop)`` (dim 0) of parameter `name` of global `shape`, as `rule` initialises it.

    Args:
        rule: the parameter's :class:`InitRule`.
        name: its qualified name (``model.layers.0.mlp.experts.gate_up_proj``), part of the seed.
        shape: its global shape; ``()`` for a scalar (then ``start, stop = 0, 1``).
        start, stop: the row range, ``0 <= start <= stop <= shape[0]``.
        base_seed: the run's base seed (:func:`draw_init_seed`).
        dtype: dtype of the result (drawn in float32, then cast).

    Returns:
        CPU tensor ``[stop - start, *shape[1:]]`` (``shape`` itself for a 0-d tensor).

    Raises:
        ValueError: an unknown ``rule.kind`` or a row range outside the tensor.
    """
    out = torch.empty((stop - start, *shape[1:]) if len(shape) else (), dtype=dtype, device="cpu")
    return init_rows_(out, rule, name, shape, start, base_seed)


@torch.no_grad()
def init_rows_(out: torch.Tensor, rule: InitRule, name: str, shape: tuple[int, ...] | torch.Size, start: int,
               base_seed: int) -> torch.Tensor:
    """Fill `out` (rows ``[start, start + out.shape[0])`` of the global tensor, any device and
    dtype) in place, one chunk at a time: besides `out`, at most one chunk (``CHUNK_ELEMENTS``
    float32 values) is allocated. Arguments and errors as :func:`init_rows`; returns `out`."""
    rows_total = shape[0] if len(shape) else 1
    stop = start + (out.shape[0] if len(shape) else 1)
    if not 0 <= start <= stop <= rows_total or tuple(out.shape[1:] if len(shape) else out.shape) != tuple(shape[1:]):
        raise ValueError(f"{name}: rows [{start}, {stop}) of shape {tuple(out.shape)} do not fit dim 0 of "
                         f"global shape {tuple(shape)}")
    if rule.kind in ("zeros", "ones"):
        return out.fill_(0.0 if rule.kind == "zeros" else 1.0)
    if rule.kind == "constant":
        return out.fill_(rule.value)
    if rule.kind != "normal":
        raise ValueError(f"{name}: unknown init kind {rule.kind!r}; expected 'normal', 'zeros', 'ones' "
                         "or 'constant'")
    per = rows_per_chunk(shape)
    row_numel = math.prod(shape[1:]) if len(shape) > 1 else 1
    flat_out = out.view(-1)
    for c in range(start // per, (stop - 1) // per + 1 if stop > start else 0):
        c0, c1 = c * per, min((c + 1) * per, rows_total)
        g = torch.Generator(device="cpu").manual_seed(chunk_seed(base_seed, name, c))
        # device="cpu" explicitly: under a `with torch.device("cuda")` build, a bare empty() would be
        # a CUDA tensor that the CPU generator cannot fill
        chunk = torch.empty((c1 - c0) * row_numel, dtype=torch.float32, device="cpu").normal_(
            0.0, rule.std, generator=g)
        lo, hi = max(start, c0), min(stop, c1)
        flat_out[(lo - start) * row_numel:(hi - start) * row_numel].copy_(
            chunk[(lo - c0) * row_numel:(hi - c0) * row_numel])
        del chunk
    return out
