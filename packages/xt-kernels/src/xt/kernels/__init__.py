"""XT kernels: grouped GEMM, token permutation, fused loss (Triton, torch, reference, NPU backends)."""
