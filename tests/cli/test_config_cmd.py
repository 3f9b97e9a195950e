"""`xt config show` / `xt config keys` (the run folder's config.toml: tests/cli/test_mix.py)."""
from __future__ import annotations

from pathlib import Path

import msgspec
from click.testing import CliRunner

from xt.cli.config import XTConfig, load_xt_config
from xt.cli.main import cli


def _leaf_keys(value: object, prefix: str = "") -> set[str]:
    """Dotted keys of a config value tree (`msgspec.to_builtins` of a Struct; None kept)."""
    if isinstance(value, msgspec.Struct):
        out: set[str] = set()
        for f in msgspec.structs.fields(value):
            v = getattr(value, f.name)
            key = f"{prefix}.{f.encode_name}" if prefix else f.encode_name
            out |= _leaf_keys(v, key) if isinstance(v, msgspec.Struct) else {key}
        return out
    return {prefix}


def test_show_prints_every_default_and_loads_back_equal(tiny_run: Path, tmp_path: Path):
    r = CliRunner().invoke(cli, ["config", "show", str(tiny_run), "--set", "train.steps=7"])
    assert r.exit_code == 0, r.output
    assert "\nsteps = 7\n" in r.output and "\nevery_minutes = 30.0\n" in r.output  # a default, not in the file
    assert "# peak_tflops = (unset)" in r.output
    shown = tmp_path / "shown.toml"
    shown.write_text(r.output)
    assert load_xt_config(shown) == load_xt_config(tiny_run, ["train.steps=7"])
    r = CliRunner().invoke(cli, ["config", "show", str(tiny_run), "--set", "train.stepz=7"])
    assert r.exit_code == 1 and "train.stepz" in r.output


def test_keys_lists_every_key_with_default_type_and_doc():
    r = CliRunner().invoke(cli, ["config", "keys"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    listed = {line.split(" = ")[0] for line in lines}
    cfg = msgspec.convert({"model": {"config": {"model_type": "qwen3_moe"}}}, XTConfig)
    assert listed == _leaf_keys(cfg)
    steps = next(line for line in lines if line.startswith("train.steps = "))
    assert steps.startswith("train.steps = 1000") and "(an integer)" in steps and "optimizer steps to run in total" in steps
    dtype = next(line for line in lines if line.startswith("train.dtype = "))
    assert "\"auto\"" in dtype and "one of 'auto', 'bf16', 'fp32'" in dtype
    assert all(line.split(")  ", 1)[-1].strip() for line in lines), [l for l in lines if not l.split(")  ", 1)[-1].strip()]
    r = CliRunner().invoke(cli, ["config", "keys", "checkpoint"])
    assert r.exit_code == 0 and {line.split(" = ")[0] for line in r.output.splitlines()} == \
        {k for k in listed if k.startswith("checkpoint.")}
    r = CliRunner().invoke(cli, ["config", "keys", "chekpoint"])
    assert r.exit_code == 1 and "the sections are checkpoint, data" in r.output
