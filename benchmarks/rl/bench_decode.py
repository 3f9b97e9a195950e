"""XT's KV-cache generation: the fast decode path against the reference loop (tokens/s).

``generate_detailed(..., decode_path=)`` on one random-initialised XT Qwen3 (default: 4 layers, hidden
256, 8 query / 4 key-value heads of 32, vocabulary 32,000; fp32), for B = 32 and 64 sequences with
prompts of 32-96 random tokens, ``--new-tokens`` sampled tokens each (temperature 1, no stop token,
so both paths run every step):

- ``reference``: every step attends all new tokens over the concatenated caches of all B sequences
  with a dense document mask (O(B^2 * L)) and reads the step's tokens on the host;
- ``fast``: per-sequence caches (O(B * L)), tokens / log-probs on the device
  (`xt.models.common.fast_decode`), every step run eagerly (``cuda_graph=False``);
- ``fast+graph`` (CUDA only): the fast path with its decode steps replayed from a CUDA graph
  (`xt.models.common.decode_graph`).

Reported: response tokens / wall seconds (median of ``--repeats`` after one warm-up run; the two
paths take turns); the decode steps alone, (tokens - B) / (seconds - seconds of a call with one new
token, i.e. the prefill); and
whether both paths gave the same tokens (same seed) and their largest log-prob difference.

    python benchmarks/rl/bench_decode.py                      # CPU, the defaults
    python benchmarks/rl/bench_decode.py --device cuda --layers 16 --hidden 1024 --vocab 151936

Writes ``benchmarks/results/bench-rl-decode-<device>-<date>.json`` (atomically) unless ``--out`` names
another path.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from _common import machine, write_result
PATHS = ("reference", "fast")
GRAPH = "fast+graph"  # on CUDA also: the fast path with its decode steps replayed from a CUDA graph


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--batches", type=int, nargs="+", default=[32, 64], help="sequences per generate call")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default=None)
    return p.parse_args()


def _model(a: argparse.Namespace, device: torch.device):
    from xt.models.qwen3.config import Qwen3Config
    from xt.models.qwen3.model import Qwen3ForCausalLM
    torch.manual_seed(0)
    heads = max(1, a.hidden // 32)
    cfg = Qwen3Config(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=3 * a.hidden,
                      num_hidden_layers=a.layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                      head_dim=32, tie_word_embeddings=True)
    return Qwen3ForCausalLM(cfg).to(device).float().eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    from xt.models.common.generate import generate_detailed

    a = _args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    paths = PATHS + ((GRAPH,) if device.type == "cuda" else ())
    model = _model(a, device)
    g = torch.Generator().manual_seed(1)
    rows = []
    for B in a.batches:
        prompts = [torch.randint(0, a.vocab, (int(torch.randint(32, 97, (1,), generator=g)),), generator=g).tolist()
                   for _ in range(B)]

        def once(path, new):
            gen = torch.Generator(device=device).manual_seed(3)
            return generate_detailed(model, prompts, new, temperature=1.0, generator=gen,
                                     decode_path="fast" if path == GRAPH else path, cuda_graph=path == GRAPH)

        def timed(path, new):
            _sync(device)
            t0 = time.perf_counter()
            res = once(path, new)
            _sync(device)
            return res, time.perf_counter() - t0

        results = {path: once(path, a.new_tokens) for path in paths}  # warm-up
        times = {path: [] for path in paths}
        prefill = {path: [] for path in paths}
        for _ in range(a.repeats):  # the paths take turns, so a change in the machine's load hits both
            for path in paths:
                results[path], t = timed(path, a.new_tokens)
                times[path].append(t)
                prefill[path].append(timed(path, 1)[1])  # the prompts' forward and one sampled token
        runs = {}
        for path in paths:
            tokens = sum(len(t) for t in results[path].tokens)
            t, t1 = statistics.median(times[path]), statistics.median(prefill[path])
            runs[path] = {"seconds": times[path], "prefill_seconds": prefill[path], "response_tokens": tokens,
                          "result": results[path], "tokens_per_s": tokens / t,
                          "decode_tokens_per_s": (tokens - B) / max(t - t1, 1e-9)}
        ref, fast = runs["reference"]["result"], runs["fast"]["result"]
        diff = max(abs(x - y) for la, lb in zip(ref.log_probs, fast.log_probs) for x, y in zip(la, lb))
        row = {"sequences": B, **{f"{p}_{k}": runs[p][k] for p in paths for k in
                                   ("tokens_per_s", "decode_tokens_per_s", "seconds", "prefill_seconds")},
               "speedup": runs["fast"]["tokens_per_s"] / runs["reference"]["tokens_per_s"],
               "decode_speedup": runs["fast"]["decode_tokens_per_s"] / runs["reference"]["decode_tokens_per_s"],
               "same_tokens": ref.tokens == fast.tokens, "max_abs_log_prob_diff": diff}
        if GRAPH in runs:
            gr = runs[GRAPH]["result"]
            row.update(graph_speedup=runs[GRAPH]["tokens_per_s"] / runs["reference"]["tokens_per_s"],
                       graph_same_tokens=gr.tokens == ref.tokens,
                       graph_max_abs_log_prob_diff=max(abs(x - y) for la, lb in zip(ref.log_probs, gr.log_probs)
                                                       for x, y in zip(la, lb)))
            print(f"B={B}: fast+graph {runs[GRAPH]['tokens_per_s']:.0f} tokens/s ({row['graph_speedup']:.2f}x the "
                  f"reference; same tokens {row['graph_same_tokens']})", flush=True)
        rows.append(row)
        print(f"B={B}: reference {row['reference_tokens_per_s']:.0f} tokens/s, fast {row['fast_tokens_per_s']:.0f} "
              f"tokens/s ({row['speedup']:.2f}x; decode steps alone {row['decode_speedup']:.2f}x)", flush=True)
    print("\n| sequences | reference tokens/s | fast tokens/s | speedup | decode steps: reference | fast | speedup "
          "| same tokens | max abs log-prob diff |\n|---:|---:|---:|---:|---:|---:|---:|:---:|---:|")
    for r in rows:
        print(f"| {r['sequences']} | {r['reference_tokens_per_s']:.0f} | {r['fast_tokens_per_s']:.0f} | "
              f"{r['speedup']:.2f}x | {r['reference_decode_tokens_per_s']:.0f} | {r['fast_decode_tokens_per_s']:.0f} | "
              f"{r['decode_speedup']:.2f}x | {r['same_tokens']} | {r['max_abs_log_prob_diff']:.1e} |")
    result = {
        "what": "XT KV-cache generation tokens/s, decode_path fast (eager; on CUDA also with a CUDA graph, "
                "fast+graph) vs reference (benchmarks/rl/bench_decode.py)",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(device),
        "setup": {"model": f"random XT Qwen3, {a.layers} layers, hidden {a.hidden}, vocab {a.vocab}, tied, fp32",
                  "params": sum(p.numel() for p in model.parameters()), "prompt_tokens": "32-96 (random)",
                  "new_tokens": a.new_tokens, "temperature": 1.0, "stop_tokens": None, "repeats": a.repeats},
        "rows": rows,
    }
    write_result(a.out, f"bench-rl-decode-{a.device}", result)


if __name__ == "__main__":
    main()
