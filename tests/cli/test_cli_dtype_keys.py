"""Every dtype key of `xt train`'s and `xt rl`'s configs takes both spellings (bf16 / bfloat16,
fp16 / float16, fp32 / float32) and keeps XT's; a bad one names the key, file and line and every
spelling; the FSDP2 policy and the memory planner read the kept spelling."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xt.cli.config import XTConfig, load_xt_config
from xt.cli.rl_config import RLRunConfig, load_rl_config
from xt.core.config import ConfigError, config_keys
from xt.parallel.config import ParallelConfig
from xt.parallel.fsdp import mixed_precision_policy
from xt.parallel.memory_plan import ModelFacts, plan_memory

MODEL = '[model.config]\nmodel_type = "qwen3_moe"\n'
#: each dtype key: the command's loader, and (value as written, value kept) pairs it accepts
CASES = {
    "train.dtype": (load_xt_config, [("auto", "auto"), ("bf16", "bf16"), ("bfloat16", "bf16"),
                                     ("fp32", "fp32"), ("float32", "fp32")]),
    "parallel.param_dtype": (load_xt_config, [("bf16", "bf16"), ("bfloat16", "bf16"), ("fp16", "fp16"),
                                              ("float16", "fp16"), ("fp32", "fp32"), ("float32", "fp32")]),
    "parallel.reduce_dtype": (load_xt_config, [("bfloat16", "bf16"), ("float16", "fp16"), ("float32", "fp32")]),
    "rollout.dtype": (load_rl_config, [("train", "train"), ("fp32", "fp32"), ("float32", "fp32")]),
}


def test_the_dtype_keys_are_these():
    """A new dtype key must join CASES (and accept both spellings)."""
    keys = {k.key for cls in (XTConfig, RLRunConfig) for k in config_keys(cls) if k.key.endswith("dtype")}
    assert keys == set(CASES)


@pytest.mark.parametrize("key", sorted(CASES))
def test_both_spellings_load_to_one(key: str, tmp_path: Path):
    load, pairs = CASES[key]
    section, name = key.split(".")
    for written, kept in pairs:
        p = tmp_path / "run.toml"
        p.write_text(f'{MODEL}[{section}]\n{name} = "{written}"\n')
        from_file = load(p)
        assert getattr(getattr(from_file, section), name) == kept
        assert from_file == load(None, [f'model.config.model_type="qwen3_moe"', f"{key}={kept}"])
    p.write_text(f'{MODEL}[{section}]\n{name} = "fp8"\n')
    with pytest.raises(ConfigError) as err:
        load(p)
    e = err.value
    assert e.key == key and e.line == 4 and str(e).startswith(f"{p}:4: bad value for `{key}`")
    assert all(f"'{written}'" in str(e) for written, _ in pairs)  # every accepted spelling listed


def test_fsdp_policy_and_planner_read_either_spelling():
    for written in ("bf16", "bfloat16"):
        policy = mixed_precision_policy(ParallelConfig(param_dtype=written, reduce_dtype="float32"))
        assert policy.param_dtype is torch.bfloat16 and policy.reduce_dtype is torch.float32
    assert mixed_precision_policy(ParallelConfig(param_dtype="float16")).param_dtype is torch.float16
    assert mixed_precision_policy(ParallelConfig()).param_dtype is None
    facts = ModelFacts(shapes={"embed.weight": (64, 8), "layers.0.w": (8, 8)}, experts=frozenset(),
                       layer_dense=(64,), layer_expert=(0,), layer_act=(16,), layer_heads=(2,), root_numel=512,
                       hidden=8, vocab=64, top_k=1, head_passes=1, castable_numel=64, moe_layers=0)
    plans = {d: plan_memory(facts, ParallelConfig(param_dtype=d), 2, tokens_per_micro_batch=16)
             for d in (None, "bf16", "bfloat16")}
    assert plans["bf16"] == plans["bfloat16"]
    assert plans["bf16"].fsdp_buffers == 512 * 2 and plans[None].fsdp_buffers == 512 * 4  # root gathered in bf16
