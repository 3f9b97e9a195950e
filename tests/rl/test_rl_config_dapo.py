"""The ``[rl]`` config section (strict TOML loading: errors name the dotted key and line) and
DAPO's overlong shaping and filtering."""
from __future__ import annotations

import textwrap

import pytest
import torch

from xt.core.config import ConfigError, ConfigStruct, dump_config, load_config
from xt.rl.config import RLConfig
from xt.rl.dapo import overlong_keep, overlong_penalty


class Run(ConfigStruct):
    rl: RLConfig = RLConfig()


DAPO = """\
[rl]
clip_eps_high = 0.28
dynamic_sampling = true
max_response_tokens = 16

[rl.overlong]
buffer_tokens = 4

[rl.mismatch]
tis = "token"
tis_cap = 2.0

[rl.reward]
function = "rl_reward_fns:by_kind"
timeout_s = 3.5
"""


def _load(tmp_path, text, overrides=()):
    p = tmp_path / "run.toml"
    p.write_text(textwrap.dedent(text))
    return load_config(p, Run, overrides)


def test_a_dapo_run_loads_and_dumps_back(tmp_path):
    cfg = _load(tmp_path, DAPO).rl
    assert (cfg.clip_eps_low, cfg.clip_eps_high, cfg.overlong.buffer_tokens) == (0.2, 0.28, 4)
    assert cfg.mismatch.enabled and cfg.reward.function == "rl_reward_fns:by_kind"
    again = _load(tmp_path, dump_config(Run(rl=cfg)))
    assert again.rl == cfg


@pytest.mark.parametrize("override,key,text", [
    ("rl.advantage='dr_grpo'", "rl.aggregation", "must be 'constant' with advantage = 'dr_grpo'"),
    (("rl.aggregation='constant'", "rl.max_response_tokens=0", "rl.overlong.buffer_tokens=0"),
     "rl.max_response_tokens", "generation budget"),
    ("rl.clip_eps_low=1.5", "rl.clip_eps_low", "must be in (0, 1)"),
    ("rl.dual_clip=0.5", "rl.dual_clip", "0 (off) or > 1"),
    ("rl.kl_estimator='k4'", "rl.kl_estimator", "k1"),
    ("rl.mismatch.tis_cap=0.0", "rl.mismatch.tis_cap", "> 0"),
    ("rl.mismatch.mask_low=2.0", "rl.mismatch.mask_low", "[0, 1]"),
    ("rl.overlong.buffer_tokens=32", "rl.max_response_tokens", "overlong.buffer_tokens"),
    ("rl.reward.function='not a path'", "rl.reward.function", "pkg.module:function"),
    ("rl.clip_eps=0.1", "rl.clip_eps", "unknown"),
])
def test_bad_values_name_the_key(tmp_path, override, key, text):
    with pytest.raises(ConfigError) as ei:
        _load(tmp_path, DAPO, [override] if isinstance(override, str) else list(override))
    assert ei.value.key == key
    assert text.lower() in str(ei.value).lower()


def test_overlong_penalty_is_dapos_piecewise_length_reward():
    lengths = torch.tensor([0, 10, 12, 13, 15, 16, 17, 40])
    got = overlong_penalty(lengths, max_tokens=16, buffer_tokens=4, factor=0.5)
    want = [0, 0, 0, -0.25, -0.75, -1.0, -2.0, -2.0]  # ((16 - 4) - L) / 4, then -1; times 0.5
    assert got.tolist() == pytest.approx([0.5 * w if w > -2 else -0.5 for w in want])
    assert overlong_penalty(lengths, max_tokens=16, buffer_tokens=0).tolist() == [0, 0, 0, 0, 0, 0, -1, -1]
    with pytest.raises(ValueError, match="rl.overlong.buffer_tokens"):
        overlong_penalty(lengths, max_tokens=16, buffer_tokens=20)


def test_overlong_keep_masks_truncated_responses():
    assert overlong_keep(torch.tensor([3, 16, 20]), max_tokens=16).tolist() == [True, False, False]
    assert overlong_keep(truncated=torch.tensor([False, True])).tolist() == [True, False]
    with pytest.raises(ValueError, match="rl.max_response_tokens"):
        overlong_keep(torch.tensor([3]))
