"""Triton multi-tensor AdamW step that also writes each master's 16-bit compute copy.

Shape legend: n tensors in one launch, N_i elements of tensor i, B blocks of ``CHUNK`` elements.

One launch updates every tensor of a (device, dtypes) class: program ``b`` handles elements
``[start_b, start_b + CHUNK)`` of tensor ``tensor_b`` (a static block table, cached per list of
sizes). Tensors are reached from one base pointer per operand plus a per-tensor element offset
(``(ptr_i - base) / itemsize``, all >= 0 because the base is the lowest address), so no pointer
arrays are needed; when every offset is a multiple of 16 elements (separate allocations: the
caching allocator aligns them to 512 bytes) the kernel is told so (``tl.multiple_of``), so that
loads and stores can be 16-byte vectors. Per element it reads param, grad, exp_avg, exp_avg_sq once and writes param,
exp_avg, exp_avg_sq and (``HAS_COPY``) ``param.to(copy dtype)`` (bf16: round to nearest even in
integer arithmetic, the same bits as torch's cast, also in the interpreter): 30 bytes per fp32 element with a
bf16 copy, against 46 for torch's separate norm-scaled clip, fused AdamW and copy passes.

The per-tensor scalars (lr, decay factor, betas, eps, step size, sqrt of the second bias
correction) come from a float64 table on the device, cast to the compute dtype: float32 for
float32 parameters (IEEE division and square root, ``div_rn`` / ``sqrt_rn``), float64 for float64
parameters (the tests' exact case). The gradient is divided by ``*scale_ptr`` when ``HAS_SCALE``
(the clip factor, `xt.core.engine.optim.clip_divisor`) and is not written back.

Only ``tl.load`` / ``tl.store`` / ``tl.program_id`` / ``tl.arange`` / ``tl.where`` /
``tl.multiple_of`` / ``tl.math.div_rn`` / ``tl.math.sqrt_rn`` / bitcasts are used: present in Triton 3.6 (the H200 image) and 3.9 (the CPU interpreter).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["CHUNK", "N_SCALARS", "adamw_launch", "block_table"]

BLOCK = 1024
ITERS = 8
CHUNK = BLOCK * ITERS
N_SCALARS = 7  # per tensor: keep = 1 - lr*wd, beta1, beta2, eps, step_size, bc2_sqrt, numel


@triton.jit
def _bf16_bits_rne(x):
    """float32 -> bfloat16 bits, round to nearest even (torch's ``.to(torch.bfloat16)``), as integer
    arithmetic: the interpreter's own float32 -> bfloat16 cast truncates. NaN stays a quiet NaN."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return tl.where(x != x, 0x7FC0, rounded).to(tl.uint16)


@triton.jit
def _adamw_kernel(p_base, g_base, m_base, v_base, c_base, offsets, scalars, blk_tensor, blk_start, scale_ptr,
                  n_tensors, HAS_SCALE: tl.constexpr, HAS_COPY: tl.constexpr, IS_FP32: tl.constexpr,
                  COPY_BF16: tl.constexpr, ALIGNED: tl.constexpr, N_SCALARS: tl.constexpr, BLOCK: tl.constexpr,
                  ITERS: tl.constexpr):
    pid = tl.program_id(0)
    t = tl.load(blk_tensor + pid).to(tl.int64)
    start = tl.load(blk_start + pid)
    p_off = tl.load(offsets + t)
    g_off = tl.load(offsets + n_tensors + t)
    m_off = tl.load(offsets + 2 * n_tensors + t)
    v_off = tl.load(offsets + 3 * n_tensors + t)
    c_off = tl.load(offsets + 4 * n_tensors + t)
    if ALIGNED:  # every offset a multiple of 16 elements: let the loads and stores be vectorised
        p_off = tl.multiple_of(p_off, 16)
        g_off = tl.multiple_of(g_off, 16)
        m_off = tl.multiple_of(m_off, 16)
        v_off = tl.multiple_of(v_off, 16)
        c_off = tl.multiple_of(c_off, 16)
    row = scalars + t * N_SCALARS
    cd = p_base.dtype.element_ty  # the compute dtype is the parameters' (float32 or float64)
    keep = tl.load(row).to(cd)
    beta1 = tl.load(row + 1).to(cd)
    beta2 = tl.load(row + 2).to(cd)
    eps = tl.load(row + 3).to(cd)
    step_size = tl.load(row + 4).to(cd)
    bc2_sqrt = tl.load(row + 5).to(cd)
    numel = tl.load(row + 6).to(tl.int64)
    if HAS_SCALE:
        scale = tl.load(scale_ptr).to(cd)
    for i in range(ITERS):
        offs = start + i * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        p = tl.load(p_base + p_off + offs, mask=mask, other=0.0)
        g = tl.load(g_base + g_off + offs, mask=mask, other=0.0).to(cd)
        m = tl.load(m_base + m_off + offs, mask=mask, other=0.0)
        v = tl.load(v_base + v_off + offs, mask=mask, other=0.0)
        if IS_FP32:
            if HAS_SCALE:
                g = tl.math.div_rn(g, scale)
            p = p * keep
            m = beta1 * m + (1.0 - beta1) * g
            v = beta2 * v + (1.0 - beta2) * g * g
            denom = tl.math.div_rn(tl.math.sqrt_rn(v), bc2_sqrt) + eps
            p = p - tl.math.div_rn(step_size * m, denom)
        else:
            if HAS_SCALE:
                g = g / scale
            p = p * keep
            m = beta1 * m + (1.0 - beta1) * g
            v = beta2 * v + (1.0 - beta2) * g * g
            denom = tl.sqrt(v) / bc2_sqrt + eps
            p = p - (step_size * m) / denom
        tl.store(p_base + p_off + offs, p, mask=mask)
        tl.store(m_base + m_off + offs, m, mask=mask)
        tl.store(v_base + v_off + offs, v, mask=mask)
        if HAS_COPY:
            if COPY_BF16:
                tl.store(c_base.to(tl.pointer_type(tl.uint16)) + c_off + offs, _bf16_bits_rne(p), mask=mask)
            else:
                tl.store(c_base + c_off + offs, p.to(c_base.dtype.element_ty), mask=mask)


def block_table(numels: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The programs of one launch: tensor index (int32 ``[B]``) and first element (int64 ``[B]``)
    of each ``CHUNK``-element block, over tensors of `numels` elements, on `device`."""
    counts = torch.tensor([max(1, -(-n // CHUNK)) for n in numels], dtype=torch.int64)
    tensor = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int32), counts)
    first = torch.cumsum(counts, 0) - counts
    start = (torch.arange(int(counts.sum()), dtype=torch.int64) - torch.repeat_interleave(first, counts)) * CHUNK
    return tensor.to(device), start.to(device)


def _offsets(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """The lowest-addressed tensor (the base) and each tensor's element offset from it."""
    base = min(tensors, key=lambda t: t.data_ptr())
    size = base.element_size()
    return base, [(t.data_ptr() - base.data_ptr()) // size for t in tensors]


def adamw_launch(params, grads, exp_avgs, exp_avg_sqs, copies, scalars: torch.Tensor,
                 blocks: tuple[torch.Tensor, torch.Tensor], scale: torch.Tensor | None) -> None:
    """One launch of the kernel over tensors of one class (same device and dtypes, contiguous).

    Args:
        params, grads, exp_avgs, exp_avg_sqs: n tensors each, elementwise alike.
        copies: n 16-bit tensors (the compute copies) or None.
        scalars: float64 ``[n, 7]`` on the device: decay factor ``1 - lr * wd``, beta1, beta2, eps,
            step size ``lr / (1 - beta1^t)``, ``sqrt(1 - beta2^t)``, numel.
        blocks: ``(tensor index int32 [B], element start int64 [B])`` on the device.
        scale: float32 scalar on the device that divides the gradients, or None.
    """
    n = len(params)
    lists = [params, grads, exp_avgs, exp_avg_sqs] + ([copies] if copies is not None else [params])
    bases, offs = zip(*(_offsets(ts) for ts in lists))
    aligned = all(o % 16 == 0 for os_ in offs for o in os_)  # allocations are 512-byte aligned
    table = torch.tensor([o for os_ in offs for o in os_], dtype=torch.int64,
                         pin_memory=params[0].is_cuda).to(params[0].device, non_blocking=True)
    blk_tensor, blk_start = blocks
    grid = (blk_tensor.numel(),)
    _adamw_kernel[grid](bases[0], bases[1], bases[2], bases[3], bases[4], table, scalars, blk_tensor, blk_start,
                        scale if scale is not None else scalars, n,
                        HAS_SCALE=scale is not None, HAS_COPY=copies is not None,
                        COPY_BF16=copies is not None and copies[0].dtype == torch.bfloat16, ALIGNED=aligned,
                        IS_FP32=params[0].dtype == torch.float32, N_SCALARS=N_SCALARS, BLOCK=BLOCK, ITERS=ITERS)
