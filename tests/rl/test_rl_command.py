"""`xt rl` on one process (tiny random Qwen3 models, the real Qwen3 tokenizer, a reasoning-gym task):

- a run of 2 RL steps, stopped by SIGTERM, then resumed for 2 more equals the uninterrupted 4-step run
  exactly: every metric of every step (rewards, losses, gradient norms, entropy, ratios) and every
  weight of the final checkpoint (two updates per step, so old log-probs and the PPO ratio are used);
- metrics.jsonl holds the RL metrics, reward.png is written, weight versions count optimizer steps;
  the banner names the rollout's precision;
- a tiny Qwen3-MoE with routing replay on runs and logs the routing agreement (non-zero: after the
  step's first update the trainer's own routing differs from the rollout's);
- config mistakes stop before any model is built with one error naming the key, file and line
  (also of ``rollout.engine``, ``rollout.dtype``, ``[orchestrator]``: trainer_workers without Ray,
  rollout_workers beside colocated trainer ranks, collective sync, and of the trainer's
  ``[parallel]`` layout against ``orchestrator.trainer_workers``).
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from rich.console import Console

from xt.cli.main import cli
from xt.cli.rl import run_rl

HERE = Path(__file__).resolve().parent
CONFIG = textwrap.dedent("""
    [model.config]
    architectures = ["{arch}"]
    vocab_size = 151936
    hidden_size = 16
    intermediate_size = 32
    num_hidden_layers = 1
    num_attention_heads = 2
    num_key_value_heads = 1
    head_dim = 8
    tie_word_embeddings = true
    {moe}

    [task]
    name = "basic_arithmetic"
    size = 20
    config = {{ min_terms = 2, max_terms = 2, max_digits = 1, operators = ["+"], allow_negation = false }}
    tokenizer = "qwen3"

    [rollout]
    prompts_per_step = 2
    group_size = 3
    max_new_tokens = 5
    updates_per_step = 2
    routing_replay = {replay}

    [rl]
    clip_eps_high = 0.28

    [rl.reward]
    function = "rl_reward_fns:vowel_share"
    workers = 1

    [train]
    steps = 8
    dtype = "fp32"
    out_dir = "{out}"
    log_every = 100

    [optim]
    lr = 1e-2

    [checkpoint]
    every_steps = 4
    keep_last = 0
""")
MOE = "num_experts = 4\n    num_experts_per_tok = 2\n    moe_intermediate_size = 8\n    norm_topk_prob = true"
TIMING = ("rollout_s", "rollout_tokens_per_s", "reward_s", "weight_sync_s", "trainer_s", "trainer_tokens_per_s",
          "step_time_s")


def _config(tmp: Path, name: str, moe: bool = False) -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(CONFIG.format(arch="Qwen3MoeForCausalLM" if moe else "Qwen3ForCausalLM", moe=MOE if moe else "",
                                  replay="true" if moe else "false", out=tmp / name))
    return path


def _rows(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """The model tensors of a checkpoint's DCP folder."""
    import torch.distributed.checkpoint as dcp
    reader = dcp.FileSystemReader(str(ckpt / "model_optim"))
    meta = reader.read_metadata()
    sd = {k: torch.empty(v.size, dtype=v.properties.dtype) for k, v in meta.state_dict_metadata.items()
          if k.startswith("model.") and hasattr(v, "size")}
    dcp.load(sd, storage_reader=reader)
    return sd


@pytest.fixture(autouse=True)
def _reward_fns_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))  # the reward workers inherit sys.path


def test_resumed_run_equals_the_uninterrupted_one(tmp_path):
    quiet = Console(file=open(tmp_path / "log.txt", "w"))
    straight = run_rl(_config(tmp_path, "straight"), console=quiet)
    a = _rows(tmp_path / "straight")
    assert [r["step"] for r in a] == [1, 2, 3, 4]
    assert [r["weight_version"] for r in a] == [2, 4, 6, 8]
    for key in ("reward_mean", "reward_std", "pass_at_1", "zero_std_group_frac", "response_len_mean",
                "response_len_max", "response_clipped_frac", "entropy", "clip_frac_low", "clip_frac_high",
                "ratio_mean", "ratio_abs_dev", "mismatch_kl_k3", "policy_loss", "grad_norm", "rollout_tokens",
                "trainer_tokens"):
        assert all(r.get(key) is not None for r in a), key
    assert any(r["ratio_abs_dev"] > 0 for r in a)  # the second update of a step sees a ratio != 1
    wa = _weights(straight.checkpoint)
    assert wa
    assert (tmp_path / "straight" / "reward.png").stat().st_size > 1000
    banner = " ".join((tmp_path / "log.txt").read_text().split())
    assert "rollout precision fp32 as the trainer (rollout.dtype = 'train'; train.dtype = 'fp32'" in banner

    # SIGTERM (a preemption) arriving during RL step 2: that step finishes, a checkpoint is saved, the
    # continue command printed; resuming gives the uninterrupted run's metrics and weights exactly
    # (this is the stop-and-resume check: a second one stopped by ``until_step`` cost ~6 s and
    # went through the same save and resume)
    import signal

    from xt.cli import rl as rl_cmd
    step = rl_cmd.GRPOLoop.step

    def step_with_sigterm(self, n):
        if n == 2:
            signal.raise_signal(signal.SIGTERM)
        return step(self, n)

    sig = _config(tmp_path, "sig")
    rl_cmd.GRPOLoop.step = step_with_sigterm
    try:
        stopped = run_rl(sig, console=quiet)
    finally:
        rl_cmd.GRPOLoop.step = step
    assert stopped.interrupted == "SIGTERM" and stopped.step == 4 and stopped.checkpoint.name == "step-4"
    assert stopped.hf_path is None and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    log = " ".join((tmp_path / "log.txt").read_text().split())
    assert "stopped by SIGTERM after step 4 of 8; checkpoint" in log and f"xt rl {sig} --resume auto" in log
    again = run_rl(sig, resume="auto", console=quiet)
    assert again.resumed_from.name == "step-4" and again.step == 8 and again.interrupted is None
    assert _rows(tmp_path / "sig") == a
    ws = _weights(again.checkpoint)
    assert ws.keys() == wa.keys() and all(torch.equal(wa[k], ws[k]) for k in wa)
    stopped_w = _weights(stopped.checkpoint)
    assert any(not torch.equal(stopped_w[k], wa[k]) for k in wa)  # it did train after the resume


def test_moe_run_with_routing_replay_logs_the_agreement(tmp_path):
    res = run_rl(_config(tmp_path, "moe", moe=True), console=Console(file=open(tmp_path / "log.txt", "w")),
                 until_step=2)
    rows = _rows(tmp_path / "moe")
    assert res.step == 2 and len(rows) == 1
    # measured before each of the 2 updates: the first sees the rollout's own weights, the second
    # the weights after one AdamW step (lr 1e-2), on which the trainer's own top-k moved
    assert 0 < rows[0]["routing_mismatch_frac"] < 1 and rows[0]["policy_loss"] is not None


@pytest.mark.parametrize("line, value, needles", [
    ("clip_eps_high = 0.28", "clip_eps_high = -1", ["rl.clip_eps_high", ".toml:"]),
    ("updates_per_step = 2", "updates_per_step = 3", ["train.steps", "multiple of rollout.updates_per_step"]),
    ("group_size = 3", "group_sise = 3", ["rollout.group_sise", ".toml:"]),
    ('tokenizer = "qwen3"', 'tokenizer = "model"', ["task.tokenizer", ".toml:", "model.init_from"]),
    ('name = "basic_arithmetic"', 'name = "no_such_task"', ["task.name", ".toml:", "no_such_task"]),
    ("updates_per_step = 2", 'updates_per_step = 2\nengine = "lmdeploy"', ["rollout.engine", "model.init_from"]),
    ("updates_per_step = 2", 'updates_per_step = 2\ndtype = "bf16"', ["rollout.dtype", ".toml:", "'train'"]),
    ("updates_per_step = 2", 'updates_per_step = 2\nengine = "lmdeploy"\ndtype = "fp32"',
     ["rollout.dtype", ".toml:", "rollout.engine = 'xt'"]),
    ("updates_per_step = 2", 'updates_per_step = 2\nengine = "lmdeploy"\ncuda_graph = false',
     ["rollout.cuda_graph", ".toml:", "rollout.engine = 'xt'"]),
    ("[rl]\n", '[orchestrator]\nkind = "ray"\nrollout_workers = 2\n\n[rl]\n',
     ["orchestrator.rollout_workers", ".toml:", "colocated"]),
    ("[rl]\n", '[orchestrator]\ntrainer_workers = 2\n\n[rl]\n',
     ["orchestrator.trainer_workers", ".toml:", "kind = 'ray'"]),
    ("[rl]\n", '[orchestrator]\nkind = "ray"\ntrainer_workers = 2\nrollout_workers = 2\n\n[rl]\n',
     ["orchestrator.rollout_workers", ".toml:", "colocated", "trainer_workers = 2"]),
    ("[rl]\n", '[orchestrator]\nkind = "ray"\nplacement = "disaggregated"\nweight_sync = "collective"\n'
               'max_staleness = 1\n\n[rl]\n', ["orchestrator.weight_sync", ".toml:", "max_staleness = 0"]),
    ("[rl]\n", '[orchestrator]\nbucket_mb = 64\n\n[rl]\n', ["orchestrator.bucket_mb", ".toml:", "kind = 'local'"]),
    ("[rl]\n", '[orchestrator]\nkind = "ray"\nweight_sync = "disk"\n\n[rl]\n',
     ["orchestrator.weight_sync", ".toml:", "placement = 'colocated'"]),
    ("[rl]\n", '[orchestrator]\nkind = "ray"\nplacement = "disaggregated"\ntrainer_workers = 4\n\n[rl]\n',
     ["orchestrator.trainer_workers", "samples of one update (3)"]),
    ("[rl]\n", '[orchestrator]\nkind = "ray"\nplacement = "disaggregated"\ntrainer_workers = 2\n\n'
               '[parallel]\nfsdp_size = 3\n\n[rl]\n', ["fsdp_size"]),
    ("[rl]\n", '[parallel]\nsp_size = 2\n\n[rl]\n', ["parallel.sp_size", ".toml:", "orchestrator.trainer_workers (1)"]),
    ("[rl]\n", '[orchestrator]\nkind = "ray"\nplacement = "disaggregated"\ntrainer_workers = 2\n\n'
               '[parallel]\nsp_size = 4\n\n[rl]\n', ["parallel.sp_size", "must divide orchestrator.trainer_workers (2)"]),
])
def test_config_mistakes_are_one_error_line(tmp_path, line, value, needles):
    path = _config(tmp_path, "bad")
    path.write_text(path.read_text().replace(line, value))
    r = CliRunner().invoke(cli, ["rl", str(path)])
    out = r.output
    assert r.exit_code == 1 and "Traceback" not in out, out
    errors = [x for x in out.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1, out
    for n in needles:
        assert n in errors[0], (n, errors[0])
    assert not (tmp_path / "bad").exists()  # nothing was built or written
