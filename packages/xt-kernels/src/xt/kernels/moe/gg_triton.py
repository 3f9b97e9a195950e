"""Triton grouped GEMM kernels: m-grouped (forward, dX) and k-grouped (dW), persistent.

Shape legend: R routed rows (sorted by expert), E experts, K reduction size, N output columns,
P x Q the per-expert weight-gradient block.

* ``mgrouped(x[R, K], w, counts[E], trans_b) -> y[R, N]`` with ``y[rows of e] = x[rows of e] @ B_e``,
  where ``B_e = w[e]`` (``w[E, K, N]``) or ``B_e = w[e]ᵀ`` (``w[E, N, K]``, ``trans_b=True``).
* ``kgrouped(a[R, P], b[R, Q], counts[E]) -> c[E, P, Q]`` with ``c[e] = a[rows of e]ᵀ @ b[rows of e]``;
  experts without rows get exactly zero (every output tile is written, empty sums included).

Scheduling (our design): a persistent grid of at most one program per SM walks the tiles
``(expert, m-tile, n-tile)`` with stride ``num_programs``. Tile counts per expert are computed on
the device inside every program from ``counts`` (a cumulative sum over a vector of E entries), so
the host never reads ``counts`` (no synchronisation) and the autotuner may pick any block size.
Operands are read through device-side tensor descriptors (TMA on Hopper) when strides allow it,
otherwise through masked pointer loads. Accumulation is float32; float32 inputs use IEEE dots.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from xt.kernels._triton_support import ensure_allocator, interpreter_active, num_sms

__all__ = ["mgrouped", "kgrouped"]


@triton.jit
def _expert_of(tile, e_idx, counts, tiles, tile_end, row_end):
    """Expert owning ``tile``, the tile's index inside it, that expert's first row and row count."""
    e = tl.sum((tile_end <= tile).to(tl.int32), 0)
    sel = e_idx == e
    cnt = tl.sum(tl.where(sel, counts, 0), 0)
    r_start = tl.sum(tl.where(sel, row_end, 0), 0) - cnt
    local = tile - tl.sum(tl.where(sel, tile_end - tiles, 0), 0)
    return e, local, r_start, cnt


@triton.jit
def _swizzle(local, m_tiles, n_tiles, GROUP_M: tl.constexpr):
    """Grouped ordering of the tiles of one expert (GROUP_M m-tiles share each n sweep)."""
    width = GROUP_M * n_tiles
    first_m = (local // width) * GROUP_M
    gsize = tl.minimum(m_tiles - first_m, GROUP_M)
    pid_m = first_m + (local % width) % gsize
    pid_n = (local % width) // gsize
    return pid_m, pid_n


@triton.jit
def _mgrouped_kernel(x_ptr, w_ptr, y_ptr, counts_ptr, R, N, K, E, M_BUCKET,
                     B_TRANS: tl.constexpr, E_POW2: tl.constexpr, USE_TMA: tl.constexpr,
                     DOT_PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                     GROUP_M: tl.constexpr, EPI_TMA: tl.constexpr = False, WS: tl.constexpr = False):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    e_idx = tl.arange(0, E_POW2)
    counts = tl.load(counts_ptr + e_idx, mask=e_idx < E, other=0).to(tl.int32)
    n_tiles = tl.cdiv(N, BN)
    tiles = tl.cdiv(counts, BM) * n_tiles
    tile_end = tl.cumsum(tiles, 0)
    row_end = tl.cumsum(counts, 0)
    total = tl.sum(tiles, 0)
    if USE_TMA:
        x_desc = tl.make_tensor_descriptor(x_ptr, shape=[R, K], strides=[K, 1], block_shape=[BM, BK])
        if B_TRANS:
            w_desc = tl.make_tensor_descriptor(w_ptr, shape=[E, N, K], strides=[N * K, K, 1],
                                               block_shape=[1, BN, BK])
        else:
            w_desc = tl.make_tensor_descriptor(w_ptr, shape=[E, K, N], strides=[K * N, N, 1],
                                               block_shape=[1, BK, BN])
    if EPI_TMA:
        y_desc = tl.make_tensor_descriptor(y_ptr, shape=[R, N], strides=[N, 1], block_shape=[BM, BN])
    for tile in tl.range(pid, total, nprog, warp_specialize=WS):
        e, local, r_start, cnt = _expert_of(tile, e_idx, counts, tiles, tile_end, row_end)
        pid_m, pid_n = _swizzle(local, tl.cdiv(cnt, BM), n_tiles, GROUP_M)
        row0 = r_start + pid_m * BM
        col0 = pid_n * BN
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        if USE_TMA:
            for k0 in range(0, K, BK):
                a = x_desc.load([row0, k0])
                if B_TRANS:
                    b = tl.trans(w_desc.load([e, col0, k0]).reshape(BN, BK))
                else:
                    b = w_desc.load([e, k0, col0]).reshape(BK, BN)
                acc = tl.dot(a, b, acc, input_precision=DOT_PREC)
        else:
            rm = row0 + tl.arange(0, BM)
            rn = col0 + tl.arange(0, BN)
            rk = tl.arange(0, BK)
            a_ptrs = x_ptr + rm.to(tl.int64)[:, None] * K + rk[None, :]
            w_base = w_ptr + e.to(tl.int64) * N * K
            if B_TRANS:
                b_ptrs = w_base + rn.to(tl.int64)[None, :] * K + rk[:, None]
                b_step = BK
            else:
                b_ptrs = w_base + rk.to(tl.int64)[:, None] * N + rn[None, :]
                b_step = BK * N
            for k0 in range(0, K, BK):
                a = tl.load(a_ptrs, mask=(rm[:, None] < R) & (rk[None, :] + k0 < K), other=0.0)
                b = tl.load(b_ptrs, mask=(rk[:, None] + k0 < K) & (rn[None, :] < N), other=0.0)
                acc = tl.dot(a, b, acc, input_precision=DOT_PREC)
                a_ptrs += BK
                b_ptrs += b_step
        out = acc.to(y_ptr.dtype.element_ty)
        if EPI_TMA and row0 + BM <= r_start + cnt:
            y_desc.store([row0, col0], out)  # a full tile: asynchronous bulk store (clipped at N)
        else:  # the expert's last, partial tile: rows past its end belong to the next expert
            rows = row0 + tl.arange(0, BM)
            cols = col0 + tl.arange(0, BN)
            mask = (rows[:, None] < r_start + cnt) & (cols[None, :] < N)
            tl.store(y_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :], out, mask=mask)


@triton.jit
def _kgrouped_kernel(a_ptr, b_ptr, c_ptr, counts_ptr, R, P, Q, E, M_BUCKET,
                     E_POW2: tl.constexpr, USE_TMA: tl.constexpr, DOT_PREC: tl.constexpr,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                     EPI_TMA: tl.constexpr = False, WS: tl.constexpr = False):
    # Here BM x BN is the output block over (P, Q) and BK the block of rows reduced over.
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    e_idx = tl.arange(0, E_POW2)
    counts = tl.load(counts_ptr + e_idx, mask=e_idx < E, other=0).to(tl.int32)
    row_end = tl.cumsum(counts, 0)
    p_tiles = tl.cdiv(P, BM)
    q_tiles = tl.cdiv(Q, BN)
    per_e = p_tiles * q_tiles
    if USE_TMA:
        a_desc = tl.make_tensor_descriptor(a_ptr, shape=[R, P], strides=[P, 1], block_shape=[BK, BM])
        b_desc = tl.make_tensor_descriptor(b_ptr, shape=[R, Q], strides=[Q, 1], block_shape=[BK, BN])
    if EPI_TMA:
        c_desc = tl.make_tensor_descriptor(c_ptr, shape=[E * P, Q], strides=[Q, 1], block_shape=[BM, BN])
    for tile in tl.range(pid, E * per_e, nprog, warp_specialize=WS):
        e = tile // per_e
        sel = e_idx == e
        cnt = tl.sum(tl.where(sel, counts, 0), 0)
        r_start = tl.sum(tl.where(sel, row_end, 0), 0) - cnt
        pid_p, pid_q = _swizzle(tile % per_e, p_tiles, q_tiles, GROUP_M)
        p0 = pid_p * BM
        q0 = pid_q * BN
        rp = p0 + tl.arange(0, BM)
        rq = q0 + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        n_full = cnt // BK
        if USE_TMA:
            for i in range(0, n_full):
                r = r_start + i * BK
                a = a_desc.load([r, p0])
                b = b_desc.load([r, q0])
                acc = tl.dot(tl.trans(a), b, acc, input_precision=DOT_PREC)
        else:
            for i in range(0, n_full):
                rows = (r_start + i * BK + rk).to(tl.int64)
                a = tl.load(a_ptr + rows[:, None] * P + rp[None, :], mask=rp[None, :] < P, other=0.0)
                b = tl.load(b_ptr + rows[:, None] * Q + rq[None, :], mask=rq[None, :] < Q, other=0.0)
                acc = tl.dot(tl.trans(a), b, acc, input_precision=DOT_PREC)
        if cnt % BK != 0:  # the partial last block of rows, masked to this expert
            rows = r_start + n_full * BK + rk
            valid = rows < r_start + cnt
            rows64 = rows.to(tl.int64)
            a = tl.load(a_ptr + rows64[:, None] * P + rp[None, :], mask=valid[:, None] & (rp[None, :] < P),
                        other=0.0)
            b = tl.load(b_ptr + rows64[:, None] * Q + rq[None, :], mask=valid[:, None] & (rq[None, :] < Q),
                        other=0.0)
            acc = tl.dot(tl.trans(a), b, acc, input_precision=DOT_PREC)
        out = acc.to(c_ptr.dtype.element_ty)
        if EPI_TMA and p0 + BM <= P:  # rows of the block stay inside expert e's [P, Q] slab
            c_desc.store([e * P + p0, q0], out)
        else:
            mask = (rp[:, None] < P) & (rq[None, :] < Q)
            tl.store(c_ptr + e.to(tl.int64) * P * Q + rp.to(tl.int64)[:, None] * Q + rq[None, :],
                     out, mask=mask)


def _cfg(bm, bn, bk, g, stages, warps, tma=True, epi=False, ws=False):
    return triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": g, "USE_TMA": tma, "EPI_TMA": epi, "WS": ws},
                         num_stages=stages, num_warps=warps)


# Hopper-oriented candidates (128-row wgmma tiles, 3-4 stage pipelines), with and without the
# bulk-store epilogue (EPI) and Triton's warp specialisation (WS) of the persistent tile loop.
# ``benchmarks/kernels/check_gpu.py`` drops the EPI/WS variants where the Triton build rejects them.
_M_CONFIGS = [_cfg(128, 256, 64, 8, 3, 8), _cfg(128, 128, 64, 8, 4, 8), _cfg(128, 128, 64, 8, 4, 4),
              _cfg(128, 256, 64, 8, 4, 8), _cfg(128, 256, 64, 8, 3, 8, epi=True),
              _cfg(128, 128, 64, 8, 4, 8, epi=True), _cfg(128, 256, 64, 8, 3, 8, epi=True, ws=True),
              _cfg(128, 128, 64, 8, 4, 4, epi=True, ws=True)]
_K_CONFIGS = [_cfg(128, 256, 64, 8, 3, 8), _cfg(128, 128, 64, 8, 4, 8), _cfg(128, 128, 64, 8, 4, 4),
              _cfg(128, 256, 32, 8, 4, 8), _cfg(128, 256, 64, 8, 3, 8, epi=True),
              _cfg(128, 128, 64, 8, 4, 4, epi=True), _cfg(128, 256, 64, 8, 3, 8, epi=True, ws=True)]
_SMALL = [_cfg(64, 64, 32, 4, 3, 4)]  # 4-byte inputs: the 16-bit tiles would not fit in shared memory


def _prune(configs, named_args, **kwargs):
    """Keep the 16-bit candidates for bf16/fp16 inputs and the small tile for float32."""
    first = named_args.get("x_ptr", named_args.get("a_ptr"))
    small = first is not None and first.element_size() > 2
    return [c for c in configs if (c in _SMALL) == small] or configs


_mgrouped_tuned = triton.autotune(_M_CONFIGS + _SMALL, key=["N", "K", "B_TRANS", "M_BUCKET", "E"],
                                  prune_configs_by={"early_config_prune": _prune})(_mgrouped_kernel)
_kgrouped_tuned = triton.autotune(_K_CONFIGS + _SMALL, key=["P", "Q", "M_BUCKET", "E"],
                                  prune_configs_by={"early_config_prune": _prune})(_kgrouped_kernel)
# Small fixed blocks for the CPU interpreter (tests): autotuning there would only cost time.
_INTERP = {"BM": 16, "BN": 16, "BK": 16, "GROUP_M": 2, "num_warps": 4}
# Whether this module's kernels were created by Triton's interpreter (decided when it is imported).
_INTERPRETED = interpreter_active()
# Tests flip this to run the tensor-descriptor (TMA) code path in the interpreter too.
INTERPRETER_USE_TMA = False


def _tma_ok(*tensors: torch.Tensor) -> bool:
    """Tensor descriptors need 16-byte aligned base pointers and row strides."""
    return all(t.data_ptr() % 16 == 0 and (t.stride(-2) * t.element_size()) % 16 == 0 for t in tensors)


def _common(x: torch.Tensor, counts: torch.Tensor):
    E = counts.numel()
    dev_index = x.device.index if x.device.type == "cuda" else None
    bucket = triton.next_power_of_2(max(1, x.shape[0] // max(E, 1)))
    prec = "ieee" if x.dtype == torch.float32 else "tf32"
    return E, triton.next_power_of_2(max(E, 2)), num_sms(dev_index), bucket, prec


def mgrouped(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor, trans_b: bool) -> torch.Tensor:
    """m-grouped GEMM (see module docstring). ``x`` and ``w`` are made contiguous; returns
    ``[R, N]`` in ``x.dtype``. Counts stay on the device (read only by the kernel)."""
    x, w = x.contiguous(), w.contiguous()
    R, K = x.shape
    N = w.shape[1] if trans_b else w.shape[2]
    y = torch.empty(R, N, dtype=x.dtype, device=x.device)
    if R == 0 or N == 0:
        return y
    if K == 0:
        return y.zero_()
    counts = counts.to(device=x.device, dtype=torch.int32)
    E, e_pow2, sms, bucket, prec = _common(x, counts)
    ensure_allocator(x.device)
    args = (x, w, y, counts, R, N, K, E, bucket)
    if _INTERPRETED:
        tma = INTERPRETER_USE_TMA and _tma_ok(x, w)
        kw = dict(_INTERP, USE_TMA=tma, EPI_TMA=tma)
        grid = (min(sms, (triton.cdiv(R, kw["BM"]) + E) * triton.cdiv(N, kw["BN"])),)
        _mgrouped_kernel[grid](*args, B_TRANS=trans_b, E_POW2=e_pow2, DOT_PREC=prec, **kw)
        return y
    if not _tma_ok(x, w):
        raise ValueError("grouped_gemm[triton]: x and w need 16-byte aligned rows (K, N multiples of "
                         f"{16 // x.element_size()} for {x.dtype}); got x {tuple(x.shape)}, w {tuple(w.shape)}")

    def grid(meta):
        return (max(1, min(sms, (triton.cdiv(R, meta["BM"]) + E) * triton.cdiv(N, meta["BN"]))),)
    with torch.cuda.device(x.device):
        _mgrouped_tuned[grid](*args, B_TRANS=trans_b, E_POW2=e_pow2, DOT_PREC=prec)
    return y


def kgrouped(a: torch.Tensor, b: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """k-grouped GEMM ``c[e] = a[rows of e]ᵀ @ b[rows of e]`` -> ``[E, P, Q]`` in ``a.dtype``;
    every block is written, so experts with no rows get exact zeros."""
    a, b = a.contiguous(), b.contiguous()
    R, P = a.shape
    Q = b.shape[1]
    E = counts.numel()
    if R == 0 or P == 0 or Q == 0:
        return torch.zeros(E, P, Q, dtype=a.dtype, device=a.device)
    c = torch.empty(E, P, Q, dtype=a.dtype, device=a.device)
    counts = counts.to(device=a.device, dtype=torch.int32)
    E, e_pow2, sms, bucket, prec = _common(a, counts)
    ensure_allocator(a.device)
    args = (a, b, c, counts, R, P, Q, E, bucket)
    if _INTERPRETED:
        tma = INTERPRETER_USE_TMA and _tma_ok(a, b)
        kw = dict(_INTERP, USE_TMA=tma, EPI_TMA=tma)
        grid = (min(sms, E * triton.cdiv(P, kw["BM"]) * triton.cdiv(Q, kw["BN"])),)
        _kgrouped_kernel[grid](*args, E_POW2=e_pow2, DOT_PREC=prec, **kw)
        return c
    if not _tma_ok(a, b):
        raise ValueError("grouped_gemm[triton]: dW operands need 16-byte aligned rows; got "
                         f"{tuple(a.shape)} and {tuple(b.shape)} in {a.dtype}")

    def grid(meta):
        return (max(1, min(sms, E * triton.cdiv(P, meta["BM"]) * triton.cdiv(Q, meta["BN"]))),)
    with torch.cuda.device(a.device):
        _kgrouped_tuned[grid](*args, E_POW2=e_pow2, DOT_PREC=prec)
    return c
