"""XT's rollout in fp32 against the training precision (``rollout.dtype``): tokens/s and log-prob agreement.

One random-initialised XT Qwen3 (default: 16 layers, hidden 1024, Qwen3's 151,936-token vocabulary,
tied head; ~0.35B parameters), one `Engine` with ``train.dtype = "bf16"`` on it, and
`XTRolloutEngine` over the same prompts and seed twice: ``rollout.dtype = "fp32"`` (the fp32
weights, no autocast) and ``"train"`` (under `Engine.compute_context`: bf16 autocast with the
engine's bf16 compute copies). Reported for each: response tokens / wall seconds of
``generate`` (after one warm-up run of the same request; median of ``--repeats``), and the absolute difference of
its per-token log-probs from the bf16 trainer's (`forward_log_probs`, one packed forward through
`Engine.forward`) on its own samples (max and mean).

    python benchmarks/rl/bench_rollout_dtype.py --device cuda            # e.g. one H200
    python benchmarks/rl/bench_rollout_dtype.py --layers 2 --hidden 128 --prompts 4 --new-tokens 16  # CPU smoke

Writes ``benchmarks/results/bench-rl-rollout-dtype-<device>-<date>.json`` (atomically) unless
``--out`` names another path.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from _common import machine, write_result


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--prompts", type=int, default=32, help="prompts per request (x --group samples)")
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    return p.parse_args()


def _model(a: argparse.Namespace, device: torch.device):
    from xt.models.qwen3.config import Qwen3Config
    from xt.models.qwen3.model import Qwen3ForCausalLM
    torch.manual_seed(0)
    heads = max(1, a.hidden // 64)
    cfg = Qwen3Config(vocab_size=151936, hidden_size=a.hidden, intermediate_size=3 * a.hidden,
                      num_hidden_layers=a.layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                      head_dim=64, tie_word_embeddings=True)
    return Qwen3ForCausalLM(cfg).to(device).float()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    from xt.core.engine import Engine
    from xt.core.engine.precision import resolve_precision
    from xt.rl.batch import pack_samples
    from xt.rl.losses import forward_log_probs
    from xt.rl.rollout import RolloutRequest, SamplingParams, XTRolloutEngine
    from xt.rl.rollout.precision import policy_precision

    a = _args()
    device = torch.device(a.device)
    model = _model(a, device)
    engine = Engine(model, torch.optim.SGD(model.parameters(), lr=0.0), precision=resolve_precision("bf16", device))
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 151936, (int(torch.randint(32, 97, (1,), generator=g)),), generator=g).tolist()
               for _ in range(a.prompts)]
    sampling = SamplingParams(max_new_tokens=a.new_tokens, temperature=1.0, top_p=1.0, stop_token_ids=[])
    request = RolloutRequest(prompts=prompts, n=a.group, seed=3, sampling=sampling)
    out: dict[str, dict] = {}
    for dtype in ("fp32", "train"):
        rollout = XTRolloutEngine(model, precision=policy_precision(engine, dtype))
        rollout.generate(request)  # warm-up: the compiled regions see the request's shapes
        times, res = [], None
        for _ in range(a.repeats):
            _sync(device)
            t0 = time.perf_counter()
            res = rollout.generate(request)
            _sync(device)
            times.append(time.perf_counter() - t0)
        s = res.samples
        tokens = sum(len(x.response_ids) for x in s)
        lp = forward_log_probs(engine, [pack_samples([x.prompt_ids for x in s], [x.response_ids for x in s])])[0]
        diffs, at = [], 0
        for x in s:
            n = len(x.prompt_ids) + len(x.response_ids)
            diffs.append((torch.tensor(x.log_probs) - lp[at + len(x.prompt_ids) - 1: at + n - 1].cpu()).abs())
            at += n
        d = torch.cat(diffs)
        out[dtype] = {"precision": rollout.precision.summary, "response_tokens": tokens, "seconds": times,
                      "tokens_per_s": tokens / statistics.median(times),
                      "vs_bf16_trainer_max_abs": float(d.max()), "vs_bf16_trainer_mean_abs": float(d.mean())}
        print(f"rollout.dtype = {dtype!r}: {out[dtype]['tokens_per_s']:.0f} tokens/s; log-probs vs the bf16 trainer "
              f"max {d.max():.2e} mean {d.mean():.2e} ({out[dtype]['precision']})", flush=True)
    result = {
        "what": "XT rollout tokens/s and log-prob agreement, rollout.dtype fp32 vs train (bf16) "
                "(benchmarks/rl/bench_rollout_dtype.py)",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(device),
        "setup": {"model": f"random XT Qwen3, {a.layers} layers, hidden {a.hidden}, vocab 151936, tied",
                  "params": sum(p.numel() for p in model.parameters()), "prompts": a.prompts, "group": a.group,
                  "prompt_tokens": "32-96 (random)", "new_tokens": a.new_tokens, "temperature": 1.0,
                  "repeats": a.repeats},
        **out,
        "speedup_train_over_fp32": out["train"]["tokens_per_s"] / out["fp32"]["tokens_per_s"],
    }
    print(f"train (bf16) / fp32 rollout tokens/s: {result['speedup_train_over_fp32']:.2f}x")
    write_result(a.out, f"bench-rl-rollout-dtype-{a.device}", result)


if __name__ == "__main__":
    main()
