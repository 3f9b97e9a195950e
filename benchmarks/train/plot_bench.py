"""Plot tokens/s against tokens per micro-batch for XT and HF transformers from `bench_train.py` JSON.

Each point is one setting of one JSON (the median tokens/s after warm-up; for a setting whose
steps differ in length, ``--full-steps`` plots the steps that filled the micro-batch instead).
Settings with several micro-batches per step are labelled with their count.

    python benchmarks/train/plot_bench.py benchmarks/results/bench-train-*.json --out plot.png
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def points(paths: list[str], full_steps: bool) -> dict[str, list[tuple[int, float, str]]]:
    """``{"XT": [(tokens per micro-batch, tokens/s, label)], "HF": [...]}`` from the JSON files."""
    out: dict[str, list[tuple[int, float, str]]] = {"XT": [], "HF": []}
    for p in paths:
        for r in json.loads(Path(p).read_text())["results"]:
            T, M = r["tokens_per_micro_batch"], r["micro_batches_per_step"]
            for side, key in (("XT", "xt"), ("HF", "hf")):
                res = r.get(key) or {}
                s = res.get("summary")
                if not s:
                    continue
                tps = s["tokens_per_s"]
                if full_steps and M == 1:
                    full = [x["tokens_per_s"] for x in res.get("steps", [])[1:] if x.get("num_tokens") == T]
                    tps = statistics.median(full) if full else tps
                out[side].append((T, tps, f"x{M}" if M > 1 else ""))
    for side in out:
        out[side].sort()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--full-steps", action="store_true")
    ap.add_argument("--hf-oom", type=int, default=None, help="mark HF out of memory at this many tokens")
    args = ap.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = points(args.json, args.full_steps)
    fig, ax = plt.subplots(figsize=(7, 4))
    for side, style, color in (("XT", "o-", "C0"), ("HF", "s--", "C1")):
        if not pts[side]:
            continue
        # the line joins the fastest setting at each length; the others are single markers
        best: dict[int, tuple[float, str]] = {}
        for x, y, lab in pts[side]:
            if x not in best or y > best[x][0]:
                best[x] = (y, lab)
        xs = sorted(best)
        ax.plot(xs, [best[x][0] for x in xs], style, color=color, label=side)
        for x, y, lab in pts[side]:
            if best[x] != (y, lab):
                ax.plot([x], [y], style[0], color=color, mfc="none")
            ax.annotate(lab or "x1", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if args.hf_oom:
        ax.axvline(args.hf_oom, color="grey", lw=0.8, ls=":")
        ax.annotate("HF: out of memory", (args.hf_oom, ax.get_ylim()[1] * 0.9), fontsize=8, xytext=(4, 0),
                    textcoords="offset points")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens per micro-batch")
    ax.set_ylabel("tokens/s (one H200)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
