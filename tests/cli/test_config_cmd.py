"""`xt config show` / `xt config keys` (the run folder's config.toml: tests/cli/test_mix.py)."""
from __future__ import annotations

from pathlib import Path

import msgspec
from click.testing import CliRunner

from xt.cli.config import XTConfig, load_xt_config
from xt.cli.main import cli
from xt.cli.rl_config import RLRunConfig
from xt.rl.run_config import RolloutConfig


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


def _key_lines(output: str) -> list[str]:
    """The key lines of `xt config keys` output (not the ``# [section]  (commands)`` headers)."""
    return [line for line in output.splitlines() if not line.startswith("# [")]


def _headers(output: str) -> dict[str, str]:
    """``{section: "xt train, xt rl"}`` from the ``# [section]  (commands)`` header lines."""
    out = {}
    for line in output.splitlines():
        if line.startswith("# ["):
            section, _, commands = line[3:].partition("]  (")
            assert section not in out, f"section {section} listed twice"
            out[section] = commands.rstrip(")")
    return out


def test_keys_lists_every_key_with_default_type_and_doc():
    r = CliRunner().invoke(cli, ["config", "keys"])
    assert r.exit_code == 0, r.output
    lines = _key_lines(r.output)
    listed = [line.split(" = ")[0] for line in lines]
    assert len(listed) == len(set(listed))  # a section both commands read is listed once
    model = {"model": {"config": {"model_type": "qwen3_moe"}}}
    train_keys = _leaf_keys(msgspec.convert(model, XTConfig))
    rl_keys = _leaf_keys(msgspec.convert(model, RLRunConfig))
    assert set(listed) == train_keys | rl_keys
    steps = next(line for line in lines if line.startswith("train.steps = "))
    assert steps.startswith("train.steps = 1000") and "(an integer)" in steps and "optimizer steps to run in total" in steps
    dtype = next(line for line in lines if line.startswith("train.dtype = "))
    assert "\"auto\"" in dtype and "one of 'auto', 'bf16', 'fp32', 'bfloat16', 'float32'" in dtype
    assert all(line.split(")  ", 1)[-1].strip() for line in lines), [l for l in lines if not l.split(")  ", 1)[-1].strip()]
    # each section's header names the commands whose config has it
    sections = {k.split(".")[0] for k in train_keys | rl_keys}
    expected = {s: ", ".join(c for c, keys in (("xt train", train_keys), ("xt rl", rl_keys))
                            if any(k.startswith(s + ".") for k in keys)) for s in sections}
    assert _headers(r.output) == expected
    assert expected["train"] == expected["parallel"] == "xt train, xt rl"
    assert expected["rollout"] == "xt rl" and expected["data"] == "xt train"
    r = CliRunner().invoke(cli, ["config", "keys", "checkpoint"])
    assert r.exit_code == 0 and {line.split(" = ")[0] for line in _key_lines(r.output)} == \
        {k for k in listed if k.startswith("checkpoint.")}
    r = CliRunner().invoke(cli, ["config", "keys", "chekpoint"])
    assert r.exit_code == 1 and "the sections are checkpoint, data" in r.output


def test_keys_of_an_rl_section():
    r = CliRunner().invoke(cli, ["config", "keys", "rollout"])
    assert r.exit_code == 0, r.output
    assert _headers(r.output) == {"rollout": "xt rl"}
    lines = _key_lines(r.output)
    assert [line.split(" = ")[0] for line in lines] == \
        [f"rollout.{f.encode_name}" for f in msgspec.structs.fields(RolloutConfig)]
    group = next(line for line in lines if line.startswith("rollout.group_size = "))
    assert group.startswith("rollout.group_size = 4 ") and "(an integer)" in group and "samples per prompt" in group
    r = CliRunner().invoke(cli, ["config", "keys", "rl.reward"])
    assert r.exit_code == 0 and _headers(r.output) == {"rl": "xt rl"}
    assert _key_lines(r.output) and all(line.startswith("rl.reward.") for line in _key_lines(r.output))
    r = CliRunner().invoke(cli, ["config", "keys", "parallel.param_dtype"])  # in both configs: one listing
    assert r.exit_code == 0 and _headers(r.output) == {"parallel": "xt train, xt rl"}
    assert len(_key_lines(r.output)) == 1


def test_keys_unknown_section_lists_both_commands_sections():
    r = CliRunner().invoke(cli, ["config", "keys", "rolout"])
    assert r.exit_code == 1
    listed = r.output.split("the sections are ", 1)[1].split(" (of ")[0].split(", ")
    assert listed == sorted({f.encode_name for cls in (XTConfig, RLRunConfig) for f in msgspec.structs.fields(cls)})
    assert "rollout" in listed and "data" in listed and "xt train, xt rl" in r.output


def test_show_resolves_an_rl_config_as_xt_rl_does(tmp_path):
    from xt.cli.rl_config import load_rl_config

    src = Path(__file__).resolve().parents[2] / "examples" / "rl_smollm2_arithmetic.toml"
    r = CliRunner().invoke(cli, ["config", "show", str(src), "--set", "rollout.group_size=3"])
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    (tmp_path / "resolved.toml").write_text(r.output)
    got = load_rl_config(tmp_path / "resolved.toml")
    assert got == load_rl_config(src, ["rollout.group_size=3"]) and got.rollout.group_size == 3
    r = CliRunner().invoke(cli, ["config", "show", str(src), "--set", "rollout.group_size=0"])
    assert r.exit_code == 1 and "rollout.group_size" in r.output  # xt rl's own checks
