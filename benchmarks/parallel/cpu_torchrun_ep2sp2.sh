#!/usr/bin/env bash
# `xt train` on the demo config with torchrun --nproc-per-node 4 (gloo, CPU), EP 2 x SP 2, against the
# single-process run on the same global batches (2 micro-batches per step = the 2 data-parallel ranks).
# fp32 and router aux loss off: the LM loss is split-invariant, the per-micro-batch aux loss is not.
# Prints both curves and writes benchmarks/results/parallel-cpu-ep2sp2-<date>.json. ~2 min on 2 cores.
#   bash benchmarks/parallel/cpu_torchrun_ep2sp2.sh [steps]
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${1:-8}
PY=${PYTHON:-.venv/bin/python}
TMP=$(mktemp -d)
export OMP_NUM_THREADS=1 TORCHELASTIC_ERROR_FILE="$TMP/elastic.json"
COMMON=(examples/qwen3_moe_shakespeare.toml --set "train.steps=$STEPS" --set data.tokens_per_micro_batch=512
        --set data.max_seq_len=256 --set 'train.dtype="fp32"' --set train.log_every=1
        --set checkpoint.hf_export=false --set sample.max_new_tokens=0 --set model.config.router_aux_loss_coef=0.0)
"$PY" -m xt.cli.main train "${COMMON[@]}" --set train.micro_batches_per_step=2 --set "train.out_dir=\"$TMP/single\"" > "$TMP/single.log"
"$PY" -m torch.distributed.run --standalone --nproc-per-node 4 -m xt.cli.main train "${COMMON[@]}" \
  --set parallel.ep_size=2 --set parallel.sp_size=2 --set "train.out_dir=\"$TMP/ep2sp2\"" > "$TMP/ep2sp2.log"
"$PY" - "$TMP" <<'PY'
import datetime, json, sys
from pathlib import Path
tmp = Path(sys.argv[1])
def curve(name):
    return [json.loads(l) for l in (tmp / name / "metrics.jsonl").read_text().splitlines() if l.strip()]
a, b = curve("single"), curve("ep2sp2")
print(f"{'step':>4}{'loss 1 proc':>14}{'loss EP2xSP2':>14}{'rel diff':>10}{'gnorm 1':>9}{'gnorm 4':>9}")
rows = []
for x, y in zip(a, b):
    rel = abs(x["loss"] - y["loss"]) / abs(x["loss"])
    rows.append({"step": x["step"], "loss_single": x["loss"], "loss_ep2sp2": y["loss"], "rel_diff": rel,
                 "grad_norm_single": x["grad_norm"], "grad_norm_ep2sp2": y["grad_norm"]})
    print(f"{x['step']:>4}{x['loss']:>14.6f}{y['loss']:>14.6f}{rel:>10.1e}{x['grad_norm']:>9.4f}{y['grad_norm']:>9.4f}")
print(f"max rel loss diff {max(r['rel_diff'] for r in rows):.2e}")
out = Path("benchmarks/results") / f"parallel-cpu-ep2sp2-{datetime.date.today().isoformat()}.json"
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps({"config": "examples/qwen3_moe_shakespeare.toml", "layout": "torchrun 4 x gloo, ep 2, sp 2",
                           "dtype": "fp32", "router_aux_loss_coef": 0.0, "rows": rows}, indent=2))
print(f"wrote {out}")
PY
