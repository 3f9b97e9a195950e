"""Device code of the Triton grouped GEMM (see :mod:`xt.kernels.moe.gg_triton` for the design,
the autotuning candidates and the host-side entry points).

Measured and rejected on the H200 (``benchmarks/kernels/probe_sched.py``, results in
``benchmarks/results/kernels-sched-*-2026-11-29.json``): two or three programs per SM, Triton's
loop flattening of the tile loop, and an L2 prefetch of the SwiGLU backward's saved gate/up tiles.
What made the SwiGLU epilogues cheap was the sigmoid itself (``FAST_SIG``).

``_mgrouped_kernel``: m-grouped product with optional SwiGLU epilogues (``ACT`` 1 forward, 2
backward); ``_kgrouped_kernel``: per-expert weight gradient. Both are persistent tile loops.
"""
from __future__ import annotations

import triton
import triton.language as tl


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
def _sigmoid(x, FAST_SIG: tl.constexpr):
    """``sigmoid(x)``; with ``FAST_SIG`` as ``0.5 · tanh(x / 2) + 0.5`` through PTX ``tanh.approx``
    (one special-function op instead of an exponential and a reciprocal)."""
    if FAST_SIG:
        t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [0.5 * x], dtype=tl.float32,
                                      is_pure=True, pack=1)
        return 0.5 * t + 0.5
    else:
        return tl.sigmoid(x)


@triton.jit
def _swiglu_math(acc, acc_up, gate, up, ACT: tl.constexpr, FAST_SIG: tl.constexpr):
    """SwiGLU (ACT 1: ``silu(acc) * acc_up``, returned twice) or its backward with ``acc = dh``
    (ACT 2: ``(dh · up · silu'(gate), dh · silu(gate))``), all float32."""
    if ACT == 1:
        h = acc * _sigmoid(acc, FAST_SIG) * acc_up
        return h, h
    else:
        sig = _sigmoid(gate, FAST_SIG)
        return acc * up * sig * (1.0 + gate * (1.0 - sig)), acc * gate * sig


# R (the routed rows) changes with every micro-batch: no specialisation on it (divisibility by 16
# would compile a second variant of every config mid-run); M_BUCKET is a tuning key only.
@triton.jit(do_not_specialize=["R", "M_BUCKET"])
def _mgrouped_kernel(x_ptr, w_ptr, y_ptr, aux_ptr, counts_ptr, R, N, K, E, M_BUCKET,
                     B_TRANS: tl.constexpr, E_POW2: tl.constexpr, USE_TMA: tl.constexpr,
                     DOT_PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                     GROUP_M: tl.constexpr, EPI_TMA: tl.constexpr = False, WS: tl.constexpr = False,
                     ACT: tl.constexpr = 0, FAST_SIG: tl.constexpr = False):
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
            first, second = _swiglu_math(acc, acc_up, gate, up, ACT, FAST_SIG)
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


# R (the routed rows) changes with every micro-batch: no specialisation on it (divisibility by 16
# would compile a second variant of every config mid-run); M_BUCKET is a tuning key only.
@triton.jit(do_not_specialize=["R", "M_BUCKET"])
def _kgrouped_kernel(a_ptr, b_ptr, c_ptr, counts_ptr, R, P, Q, E, M_BUCKET,
                     E_POW2: tl.constexpr, USE_TMA: tl.constexpr, DOT_PREC: tl.constexpr,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                     EPI_TMA: tl.constexpr = False, WS: tl.constexpr = False, ACCUM: tl.constexpr = False):
    # Here BM x BN is the output block over (P, Q) and BK the block of rows reduced over.
    # ACCUM: c (float32) += the block instead of c = the block (weight-gradient accumulation into an
    # fp32 main gradient in the epilogue: no 16-bit dW round trip through memory).
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
    if EPI_TMA and not ACCUM:
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
        if ACCUM:
            mask = (rp[:, None] < P) & (rq[None, :] < Q)
            c_ptrs = c_ptr + e.to(tl.int64) * P * Q + rp.to(tl.int64)[:, None] * Q + rq[None, :]
            tl.store(c_ptrs, tl.load(c_ptrs, mask=mask, other=0.0) + acc, mask=mask)
        else:
            out = acc.to(c_ptr.dtype.element_ty)
            if EPI_TMA and p0 + BM <= P:  # rows of the block stay inside expert e's [P, Q] slab
                c_desc.store([e * P + p0, q0], out)
            else:
                mask = (rp[:, None] < P) & (rq[None, :] < Q)
                tl.store(c_ptr + e.to(tl.int64) * P * Q + rp.to(tl.int64)[:, None] * Q + rq[None, :],
                         out, mask=mask)
