"""Seconds per weight sync of `xt rl` on Ray, disaggregated, by ``orchestrator.weight_sync``.

A random Qwen3 (``--hidden`` x ``--layers``, the Qwen3 vocabulary, fp32) on one trainer actor and
``--rollout-workers`` rollout actors; each mode (object store, disk, collective) syncs the trainer's
weights ``--repeats`` times (`RayRun.rollout.load_weights`: HF-named buckets of ``--bucket-mb``),
(the tests check the result bit for bit: tests/rl/test_rl_ray.py).
The median goes into ``benchmarks/results/bench-rl-weight-sync-<device>-<date>.json`` (atomically).

    python benchmarks/rl/bench_weight_sync.py                       # CPU, gloo
    python benchmarks/rl/bench_weight_sync.py --hidden 2048 --layers 8 --out PATH.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from xt.cli.rl_config import load_rl_config
from xt.rl.cluster import RayRun
from xt.rl.loop.build import StateHolder

CONFIG = """
[model.config]
architectures = ["Qwen3ForCausalLM"]
vocab_size = 151936
hidden_size = {hidden}
intermediate_size = {inter}
num_hidden_layers = {layers}
num_attention_heads = 4
num_key_value_heads = 2
head_dim = 64
tie_word_embeddings = false

[task]
name = "basic_arithmetic"
size = 8
tokenizer = "qwen3"

[rl.reward]
function = "xt.rl.rewards.numeric:numeric_answer_reward"

[train]
dtype = "fp32"
out_dir = "{out}"

[orchestrator]
kind = "ray"
placement = "disaggregated"
weight_sync = "{mode}"
rollout_workers = {workers}
bucket_mb = {bucket}
"""


def main() -> None:
    """Parse the flags, time each mode, print and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rollout-workers", type=int, default=2)
    ap.add_argument("--bucket-mb", type=float, default=64.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/bench-rl-weight-sync-DEVICE-DATE.json)")
    args = ap.parse_args()
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("object_store", "disk", "collective"):
            path = Path(tmp) / f"{mode}.toml"
            path.write_text(CONFIG.format(hidden=args.hidden, inter=3 * args.hidden, layers=args.layers,
                                          out=Path(tmp) / mode, mode=mode, workers=args.rollout_workers,
                                          bucket=args.bucket_mb))
            run = RayRun(load_rl_config(path), Path(tmp) / mode)
            try:
                times = []
                for v in range(args.repeats):
                    t0 = time.perf_counter()
                    run.rollout.load_weights(None, v + 1)
                    times.append(time.perf_counter() - t0)
                nbytes = run.rollout.sync_bytes
            finally:
                run.close()  # Ray was started here, so only the actors stop
            rows.append({"weight_sync": mode, "median_s": statistics.median(times), "all_s": times, "bytes": nbytes})
            print(f"{mode:13s} {statistics.median(times):7.3f} s  ({nbytes / 2 ** 20:.0f} MiB, "
                  f"{args.rollout_workers} rollout actors)", flush=True)
    ray.shutdown()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(args.out) if args.out else Path(__file__).resolve().parents[1] / "results" / (
        f"bench-rl-weight-sync-{device}-{datetime.date.today().isoformat()}.json")
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps({"args": vars(args), "threads": torch.get_num_threads(), "rows": rows}, indent=1))
    os.replace(tmp_out, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
