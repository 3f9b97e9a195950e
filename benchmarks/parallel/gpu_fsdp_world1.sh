#!/usr/bin/env bash
# FSDP2 + activation checkpointing through NCCL at world size 1 (torchrun) vs the plain
# single-process run, on the demo Qwen3-MoE. Prints a table (tokens/s, MFU, peak memory) and writes
# benchmarks/results/parallel-fsdp-world1-<date>.json. Run from the repository root on the GPU machine:
#   bash benchmarks/parallel/gpu_fsdp_world1.sh [extra args for fsdp_world1.py, e.g. --tokens 32768]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
TMP=$(mktemp -d)
LOG=${LOG:-benchmarks/results/parallel-fsdp-world1.log}
mkdir -p benchmarks/results
export TORCHELASTIC_ERROR_FILE="$TMP/elastic.json" OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
{
  "$PY" benchmarks/parallel/fsdp_world1.py --mode plain_bf16 --out "$TMP/plain_bf16.json" "$@"
  for mode in fsdp_bf16 fsdp_ac_bf16 fsdp_ac_mp; do
    "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 benchmarks/parallel/fsdp_world1.py \
      --mode "$mode" --out "$TMP/$mode.json" "$@"
  done
  "$PY" benchmarks/parallel/fsdp_world1.py --summarize "$TMP"/plain_bf16.json "$TMP"/fsdp_bf16.json \
    "$TMP"/fsdp_ac_bf16.json "$TMP"/fsdp_ac_mp.json
} 2>&1 | tee "$LOG"
