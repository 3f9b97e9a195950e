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

__all__ = ["mgrouped", "kgrouped", "mgrouped_swiglu", "mgrouped_dswiglu"]


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
def _swiglu_math(acc, acc_up, gate, up, ACT: tl.constexpr):
    """SwiGLU (ACT 1: ``silu(acc) * acc_up``, returned twice) or its backward with ``acc = dh``
    (ACT 2: ``(dh · up · silu'(gate), dh · silu(gate))``), all float32."""
    if ACT == 1:
        h = acc * tl.sigmoid(acc) * acc_up
        return h, h
    else:
        sig = tl.sigmoid(gate)
        return acc * up * sig * (1.0 + gate * (1.0 - sig)), acc * gate * sig


@triton.jit
def _mgrouped_kernel(x_ptr, w_ptr, y_ptr, aux_ptr, counts_ptr, R, N, K, E, M_BUCKET,
                     B_TRANS: tl.constexpr, E_POW2: tl.constexpr, USE_TMA: tl.constexpr,
                     DOT_PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                     GROUP_M: tl.constexpr, EPI_TMA: tl.constexpr = False, WS: tl.constexpr = False,
                     ACT: tl.constexpr = 0):
    # ACT 0: y[R, N] = x @ B_e.
    # ACT 1 (SwiGLU forward; B_TRANS, w[E, 2N, K] = [gate; up]): two accumulators per tile,
    #   gate = x @ w[e, :N]ᵀ and up = x @ w[e, N:]ᵀ; writes aux[R, 2N] = [gate | up] and
    #   y[R, N] = silu(gate) * up from the float32 accumulators.
    # ACT 2 (SwiGLU backward): the product is dh[R, N]; reads aux[R, 2N] = [gate | up] and writes
    #   y[R, 2N] = [dh * up * silu'(gate) | dh * silu(gate)].
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    e_idx = tl.arange(0, E_POW2)
    counts = tl.load(counts_ptr + e_idx, mask=e_idx < E, other=0).to(tl.int32)
    n_tiles = tl.cdiv(N, BN)
    tiles = tl.cdiv(counts, BM) * n_tiles
    tile_end = tl.cumsum(tiles, 0)
    row_end = tl.cumsum(counts, 0)
    total = tl.sum(tiles, 0)
    WN = 2 * N if ACT == 1 else N  # rows of each expert's weight (gate and up stacked for ACT 1)
    if USE_TMA:
        x_desc = tl.make_tensor_descriptor(x_ptr, shape=[R, K], strides=[K, 1], block_shape=[BM, BK])
        if B_TRANS:
            w_desc = tl.make_tensor_descriptor(w_ptr, shape=[E, WN, K], strides=[WN * K, K, 1],
                                               block_shape=[1, BN, BK])
        else:
            w_desc = tl.make_tensor_descriptor(w_ptr, shape=[E, K, N], strides=[K * N, N, 1],
                                               block_shape=[1, BK, BN])
    YN = 2 * N if ACT == 2 else N  # columns of y
    if EPI_TMA:
        y_desc = tl.make_tensor_descriptor(y_ptr, shape=[R, YN], strides=[YN, 1], block_shape=[BM, BN])
        if ACT != 0:
            gu_desc = tl.make_tensor_descriptor(aux_ptr, shape=[R, 2 * N], strides=[2 * N, 1],
                                                block_shape=[BM, BN])
    for tile in tl.range(pid, total, nprog, warp_specialize=WS):
        e, local, r_start, cnt = _expert_of(tile, e_idx, counts, tiles, tile_end, row_end)
        pid_m, pid_n = _swizzle(local, tl.cdiv(cnt, BM), n_tiles, GROUP_M)
        row0 = r_start + pid_m * BM
        col0 = pid_n * BN
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        acc_up = tl.zeros((BM, BN), dtype=tl.float32)  # used by ACT 1 only
        if USE_TMA:
            for k0 in range(0, K, BK):
                a = x_desc.load([row0, k0])
                if B_TRANS:
                    b = tl.trans(w_desc.load([e, col0, k0]).reshape(BN, BK))
                else:
                    b = w_desc.load([e, k0, col0]).reshape(BK, BN)
                acc = tl.dot(a, b, acc, input_precision=DOT_PREC)
                if ACT == 1:  # gate rows past N read into the up half: masked columns, never stored
                    b_up = tl.trans(w_desc.load([e, N + col0, k0]).reshape(BN, BK))
                    acc_up = tl.dot(a, b_up, acc_up, input_precision=DOT_PREC)
        else:
            rm = row0 + tl.arange(0, BM)
            rn = col0 + tl.arange(0, BN)
            rk = tl.arange(0, BK)
            a_ptrs = x_ptr + rm.to(tl.int64)[:, None] * K + rk[None, :]
            w_base = w_ptr + e.to(tl.int64) * WN * K
            if B_TRANS:
                b_ptrs = w_base + rn.to(tl.int64)[None, :] * K + rk[:, None]
                b_step = BK
            else:
                b_ptrs = w_base + rk.to(tl.int64)[:, None] * N + rn[None, :]
                b_step = BK * N
            for k0 in range(0, K, BK):
                a = tl.load(a_ptrs, mask=(rm[:, None] < R) & (rk[None, :] + k0 < K), other=0.0)
                b_mask = (rk[:, None] + k0 < K) & (rn[None, :] < N)
                b = tl.load(b_ptrs, mask=b_mask, other=0.0)
                acc = tl.dot(a, b, acc, input_precision=DOT_PREC)
                if ACT == 1:
                    b_up = tl.load(b_ptrs + N * K, mask=b_mask, other=0.0)
                    acc_up = tl.dot(a, b_up, acc_up, input_precision=DOT_PREC)
                a_ptrs += BK
                b_ptrs += b_step
        if ACT != 0:  # rows at or past r_start + cnt belong to the next expert: never stored
            rows = row0 + tl.arange(0, BM)
            cols = col0 + tl.arange(0, BN)
            mask = (rows[:, None] < r_start + cnt) & (cols[None, :] < N)
            gate_off = rows.to(tl.int64)[:, None] * (2 * N) + cols[None, :]
            dtype = y_ptr.dtype.element_ty
            gate = acc
            up = acc_up
            if ACT == 2:  # gate columns past N read up values: masked, never stored
                if EPI_TMA:
                    gate = gu_desc.load([row0, col0]).to(tl.float32)
                    up = gu_desc.load([row0, N + col0]).to(tl.float32)
                else:
                    gate = tl.load(aux_ptr + gate_off, mask=mask, other=0.0).to(tl.float32)
                    up = tl.load(aux_ptr + gate_off + N, mask=mask, other=0.0).to(tl.float32)
            first, second = _swiglu_math(acc, acc_up, gate, up, ACT)
            if EPI_TMA and (row0 + BM <= r_start + cnt) and (col0 + BN <= N):
                if ACT == 1:
                    y_desc.store([row0, col0], first.to(dtype))
                    gu_desc.store([row0, col0], gate.to(dtype))
                    gu_desc.store([row0, N + col0], up.to(dtype))
                else:
                    y_desc.store([row0, col0], first.to(dtype))
                    y_desc.store([row0, N + col0], second.to(dtype))
            elif ACT == 1:
                tl.store(y_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :], first.to(dtype), mask=mask)
                tl.store(aux_ptr + gate_off, gate.to(dtype), mask=mask)
                tl.store(aux_ptr + gate_off + N, up.to(dtype), mask=mask)
            else:
                tl.store(y_ptr + gate_off, first.to(dtype), mask=mask)
                tl.store(y_ptr + gate_off + N, second.to(dtype), mask=mask)
        elif EPI_TMA and row0 + BM <= r_start + cnt:
            # a full tile: asynchronous bulk store (clipped at N)
            y_desc.store([row0, col0], acc.to(y_ptr.dtype.element_ty))
        else:  # the expert's last, partial tile: rows past its end belong to the next expert
            rows = row0 + tl.arange(0, BM)
            cols = col0 + tl.arange(0, BN)
            mask = (rows[:, None] < r_start + cnt) & (cols[None, :] < N)
            tl.store(y_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :], acc.to(y_ptr.dtype.element_ty),
                     mask=mask)


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
# SwiGLU epilogues (ACT 1/2), through pointers or tensor descriptors (EPI); ACT 1 keeps two
# accumulators, so its BN is the width of each (gate, up) half.
_ACT_CONFIGS = [_cfg(128, 128, 64, 8, 3, 8), _cfg(128, 128, 64, 8, 4, 8), _cfg(128, 64, 64, 8, 4, 4),
                _cfg(128, 128, 64, 8, 3, 8, epi=True), _cfg(128, 128, 64, 8, 4, 8, epi=True),
                _cfg(128, 64, 64, 8, 4, 4, epi=True), _cfg(128, 256, 64, 8, 3, 8, epi=True)]


def _prune(configs, named_args, **kwargs):
    """Keep the 16-bit candidates for bf16/fp16 inputs and the small tile for float32; the SwiGLU
    epilogue modes get their own candidates (ACT 1 without 256-wide halves)."""
    first = named_args.get("x_ptr", named_args.get("a_ptr"))
    small = first is not None and first.element_size() > 2
    act = kwargs.get("ACT", named_args.get("ACT", 0))
    # by identity: equal-valued configs appear in several lists
    small_ids, act_ids = {id(c) for c in _SMALL}, {id(c) for c in _ACT_CONFIGS}
    if small:
        return [c for c in configs if id(c) in small_ids] or configs
    if act:
        return [c for c in configs if id(c) in act_ids
                and not (act == 1 and c.kwargs["BN"] > 128)]
    return [c for c in configs if id(c) not in small_ids and id(c) not in act_ids] or configs


_mgrouped_tuned = triton.autotune(_M_CONFIGS + _ACT_CONFIGS + _SMALL, key=["N", "K", "B_TRANS", "M_BUCKET", "E", "ACT"],
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


def _launch_m(x, w, y, aux, counts, trans_b: bool, N: int, act: int) -> None:
    """Run the m-grouped kernel over ``x[R, K]`` into ``y`` (see ``_mgrouped_kernel`` for ``act``)."""
    R, K = x.shape
    counts = counts.to(device=x.device, dtype=torch.int32)
    E, e_pow2, sms, bucket, prec = _common(x, counts)
    ensure_allocator(x.device)
    args = (x, w, y, aux, counts, R, N, K, E, bucket)
    if _INTERPRETED:
        tma = INTERPRETER_USE_TMA and _tma_ok(x, w)
        kw = dict(_INTERP, USE_TMA=tma, EPI_TMA=tma)
        grid = (min(sms, (triton.cdiv(R, kw["BM"]) + E) * triton.cdiv(N, kw["BN"])),)
        _mgrouped_kernel[grid](*args, B_TRANS=trans_b, E_POW2=e_pow2, DOT_PREC=prec, ACT=act, **kw)
        return
    if not _tma_ok(x, w):
        raise ValueError("grouped_gemm[triton]: x and w need 16-byte aligned rows (K, N multiples of "
                         f"{16 // x.element_size()} for {x.dtype}); got x {tuple(x.shape)}, w {tuple(w.shape)}")

    def grid(meta):
        return (max(1, min(sms, (triton.cdiv(R, meta["BM"]) + E) * triton.cdiv(N, meta["BN"]))),)
    with torch.cuda.device(x.device):
        _mgrouped_tuned[grid](*args, B_TRANS=trans_b, E_POW2=e_pow2, DOT_PREC=prec, ACT=act)


def mgrouped(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor, trans_b: bool) -> torch.Tensor:
    """m-grouped GEMM (see module docstring). ``x`` and ``w`` are made contiguous; returns
    ``[R, N]`` in ``x.dtype``. Counts stay on the device (read only by the kernel)."""
    return _product_m(x, w, counts, trans_b, 0, None)


def _product_m(x, w, counts, trans_b: bool, act: int, gate_up) -> torch.Tensor:
    """Host side of the single-output modes: ``[R, N]`` (ACT 0) or ``[R, 2N]`` (ACT 2, with
    ``gate_up[R, 2N]``), zero-sized and K = 0 cases handled without a launch."""
    x, w = x.contiguous(), w.contiguous()
    R, K = x.shape
    N = w.shape[1] if trans_b else w.shape[2]
    y = torch.empty(R, 2 * N if act == 2 else N, dtype=x.dtype, device=x.device)
    if R == 0 or N == 0:
        return y
    if K == 0:
        return y.zero_()
    _launch_m(x, w, y, y if gate_up is None else gate_up.contiguous(), counts, trans_b, N, act)
    return y


def mgrouped_swiglu(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate/up projection with the SwiGLU activation fused into the epilogue.

    Args:
        x: ``[R, K]`` rows sorted by expert.
        w: ``[E, 2F, K]`` (``nn.Linear`` layout): rows ``[:F]`` gate, ``[F:]`` up.
        counts: ``[E]`` rows per expert (on the device).

    Returns:
        ``(gate_up[R, 2F], h[R, F])`` in ``x.dtype``: the two projections (saved for the backward)
        and ``h = silu(gate) * up`` computed from the float32 accumulators.
    """
    x, w = x.contiguous(), w.contiguous()
    R, K = x.shape
    F = w.shape[1] // 2
    gate_up = torch.empty(R, 2 * F, dtype=x.dtype, device=x.device)
    h = torch.empty(R, F, dtype=x.dtype, device=x.device)
    if R == 0 or F == 0:
        return gate_up, h
    if K == 0:
        return gate_up.zero_(), h.zero_()
    _launch_m(x, w, h, gate_up, counts, True, F, 1)
    return gate_up, h


def mgrouped_dswiglu(dy: torch.Tensor, w: torch.Tensor, gate_up: torch.Tensor, counts: torch.Tensor,
                     trans_b: bool) -> torch.Tensor:
    """Down projection's input gradient with the SwiGLU backward fused into the epilogue.

    ``dh = dy @ B_e`` (``B_e = w[e]`` for ``w[E, K, F]``, or ``w[e]ᵀ`` for ``w[E, F, K]`` with
    ``trans_b``), then ``d_gate = dh · up · silu'(gate)``, ``d_up = dh · silu(gate)``.

    Args:
        dy: ``[R, K]`` gradient of the expert output, rows sorted by expert.
        w: the down projection's weight in either layout.
        gate_up: ``[R, 2F]`` saved ``[gate | up]`` of the forward.
        counts: ``[E]`` rows per expert (on the device).
        trans_b: layout of ``w``.

    Returns:
        ``[R, 2F]`` = ``[d_gate | d_up]`` in ``dy.dtype``.
    """
    return _product_m(dy, w, counts, trans_b, 2, gate_up)


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
