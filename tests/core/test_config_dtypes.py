"""Dtype keys take XT's spelling (bf16 / fp16 / fp32) or torch's (bfloat16 / float16 / float32),
stored as XT's; anything else is refused naming the key, file and line and every spelling."""
from __future__ import annotations

import pytest

from xt.core.config import ConfigError, ConfigFieldError, ConfigStruct, TrainConfig, dump_config, load_config
from xt.core.config.dtypes import DTYPE_ALIASES, DTYPES, TORCH_DTYPE_NAMES, normalize_dtype


class Top(ConfigStruct):
    train: TrainConfig = TrainConfig()


@pytest.mark.parametrize("torch_name,xt_name", [("bfloat16", "bf16"), ("float16", "fp16"), ("float32", "fp32")])
def test_both_spellings_give_the_short_one(torch_name, xt_name):
    assert normalize_dtype(torch_name, "x") == normalize_dtype(xt_name, "x") == xt_name
    assert TORCH_DTYPE_NAMES[xt_name] == torch_name and DTYPE_ALIASES[torch_name] == xt_name
    assert normalize_dtype("auto", "x", words=("auto",)) == "auto"


def test_refused_value_lists_every_spelling():
    with pytest.raises(ConfigFieldError) as err:
        normalize_dtype("fp16", "dtype", ("bf16", "fp32"), words=("auto",))
    assert err.value.field == "dtype"
    assert err.value.detail == "must be one of 'auto', 'bf16' (or 'bfloat16'), 'fp32' (or 'float32'), got 'fp16'"
    for bad in ("fp8", "torch.bfloat16", 16, None):
        with pytest.raises(ConfigFieldError):
            normalize_dtype(bad, "dtype")
    assert set(DTYPES) == set(TORCH_DTYPE_NAMES)


def test_train_dtype_normalised_in_python_and_from_toml(tmp_path):
    assert TrainConfig(dtype="bfloat16").dtype == "bf16" and TrainConfig(dtype="float32") == TrainConfig(dtype="fp32")
    with pytest.raises(ConfigFieldError) as err:
        TrainConfig(dtype="float16")
    assert err.value.field == "dtype" and "'bf16' (or 'bfloat16')" in err.value.detail
    p = tmp_path / "run.toml"
    p.write_text('[train]\nsteps = 5\ndtype = "bfloat16"\n')
    cfg = load_config(p, Top)
    assert cfg.train.dtype == "bf16" and cfg == load_config(None, Top, ["train.steps=5", "train.dtype=bf16"])
    assert 'dtype = "bf16"' in dump_config(cfg)  # xt config show / the run's config.toml: one spelling
    assert load_config(p, Top, ["train.dtype=float32"]).train.dtype == "fp32"
    p.write_text('[train]\nsteps = 5\ndtype = "float16"\n')
    with pytest.raises(ConfigError) as err:
        load_config(p, Top)
    e = err.value
    assert e.key == "train.dtype" and e.line == 3 and str(e).startswith(f"{p}:3: bad value for `train.dtype`")
    assert "'auto', 'bf16', 'fp32', 'bfloat16', 'float32'" in str(e)
