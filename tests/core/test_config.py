"""Strict config loading: errors name the dotted key, the file and line, and what is allowed."""
import textwrap

import msgspec
import pytest

from xt.core.config import (CheckpointConfig, ConfigError, ConfigFieldError, ConfigStruct,
                            OptimConfig, ScheduleConfig, TrainConfig, dump_config, load_config,
                            parse_override)


class ModelSection(ConfigStruct):
    """Stands in for a section another package (e.g. xt.models) contributes."""

    name: str
    hidden_size: int = 16


class Top(ConfigStruct):
    model: ModelSection
    train: TrainConfig = TrainConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()


GOOD = """\
# an example run
[model]
name = "tiny"

[train]
steps = 50
dtype = "bf16"

[optim]
lr = 1e-3
betas = [0.9, 0.99]

[schedule]
warmup_steps = 5
decay = "linear"
"""


def _write(tmp_path, text, name="run.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def _line(text, needle):
    """1-based line of the first line of `text` that starts with `needle` (independent of the
    loader's own scanner)."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(needle))


def _error(tmp_path, text, overrides=()):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config(p, Top, list(overrides))
    return p, ei.value


def test_good_file_loads_with_types_and_defaults(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD), Top, [])
    assert cfg.model == ModelSection(name="tiny", hidden_size=16)
    assert cfg.train.steps == 50 and cfg.train.dtype == "bf16"
    assert cfg.train.micro_batches_per_step == TrainConfig().micro_batches_per_step
    assert cfg.optim.lr == 1e-3 and cfg.optim.betas == (0.9, 0.99)
    assert cfg.schedule == ScheduleConfig(warmup_steps=5, decay="linear")


def test_unknown_key_names_key_file_line_and_allowed_keys(tmp_path):
    text = GOOD.replace("steps = 50", "stepz = 50")
    p, e = _error(tmp_path, text)
    n = _line(text, "stepz")
    assert e.key == "train.stepz" and e.line == n and e.path == str(p)
    msg = str(e)
    assert f"{p}:{n}:" in msg and "`train.stepz`" in msg
    for allowed in ("steps", "micro_batches_per_step", "dtype", "out_dir"):
        assert allowed in msg


class Part(ConfigStruct):
    source: str
    weight: float = 1.0


class WithOptional(ConfigStruct):
    """An optional table (like ``data.vision``) and an array of tables (like ``[[data.mix]]``)."""

    extra: ModelSection | None = None
    parts: list[Part] = []


def test_unknown_key_in_an_optional_table_and_in_an_array_of_tables(tmp_path):
    text = "[extra]\nname = 'a'\nhidden_sise = 3\n"
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config(p, WithOptional, [])
    e = ei.value  # not a TypeError from the `T | None` section type
    assert e.key == "extra.hidden_sise" and e.line == 3 and "allowed keys in [extra]: name, hidden_size" in str(e)
    text = "[[parts]]\nsource = 'a'\n\n[[parts]]\nsource = 'b'\nweigth = 2\n"
    p = _write(tmp_path, text, "mix.toml")
    with pytest.raises(ConfigError) as ei:
        load_config(p, WithOptional, [])
    e = ei.value
    assert e.key == "parts[1].weigth" and e.line == _line(text, "weigth") == 6
    assert "source, weight" in str(e)


def test_unknown_section(tmp_path):
    text = GOOD + "\n[trian]\nsteps = 3\n"
    p, e = _error(tmp_path, text)
    assert e.key == "trian" and f"{p}:{_line(text, '[trian]')}:" in str(e)
    assert "train" in str(e) and "schedule" in str(e)


def test_bad_type(tmp_path):
    p, e = _error(tmp_path, GOOD.replace("steps = 50", 'steps = "fifty"'))
    n = _line(GOOD, "steps")
    assert e.key == "train.steps" and e.line == n
    assert f"{p}:{n}:" in str(e) and "an integer" in str(e) and "str" in str(e)


def test_bool_is_not_an_integer(tmp_path):
    _, e = _error(tmp_path, GOOD.replace("steps = 50", "steps = true"))
    assert e.key == "train.steps"


def test_bad_enum_value_lists_allowed(tmp_path):
    p, e = _error(tmp_path, GOOD.replace('decay = "linear"', 'decay = "exponential"'))
    assert e.key == "schedule.decay" and e.line == _line(GOOD, "decay")
    for allowed in ("'cosine'", "'linear'", "'constant'"):
        assert allowed in str(e)


def test_out_of_range_value_from_post_init(tmp_path):
    p, e = _error(tmp_path, GOOD.replace("warmup_steps = 5", "warmup_steps = -2"))
    assert e.key == "schedule.warmup_steps" and e.line == _line(GOOD, "warmup_steps")
    assert ">= 0" in str(e) and "-2" in str(e)
    _, e = _error(tmp_path, GOOD.replace("[0.9, 0.99]", "[0.9, 1.0]"))
    assert e.key == "optim.betas" and "[0, 1)" in str(e)


def test_missing_required_key(tmp_path):
    _, e = _error(tmp_path, GOOD.replace('name = "tiny"', 'hidden_size = 8'))
    assert e.key == "model.name" and "missing" in str(e)


def test_toml_syntax_error_has_line(tmp_path):
    p, e = _error(tmp_path, GOOD.replace("steps = 50", "steps == 50"))
    n = _line(GOOD, "steps")
    assert e.line == n and f"{p}:{n}:" in str(e) and "TOML" in str(e)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", Top, [])


def test_overrides_parse_toml_literals_and_win(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD), Top, [
        "train.steps=7", "optim.lr=2.5e-4", "optim.betas=[0.8, 0.9]", "train.dtype=fp32",
        "checkpoint.hf_export=false", 'train.out_dir="runs/x y"', "model.hidden_size=32",
        "train.steps=9"])
    assert cfg.train.steps == 9  # the last override wins
    assert cfg.optim.lr == 2.5e-4 and cfg.optim.betas == (0.8, 0.9)
    assert cfg.train.dtype == "fp32" and cfg.checkpoint.hf_export is False
    assert cfg.train.out_dir == "runs/x y" and cfg.model.hidden_size == 32


def test_overrides_without_file_and_creating_sections():
    cfg = load_config(None, Top, ["model.name=tiny", "checkpoint.every_steps=3"])
    assert cfg.model.name == "tiny" and cfg.checkpoint.every_steps == 3
    assert cfg.train == TrainConfig()


def test_override_errors_name_the_override(tmp_path):
    p = _write(tmp_path, GOOD)
    with pytest.raises(ConfigError) as ei:
        load_config(p, Top, ["train.dtype=fp16"])
    assert ei.value.key == "train.dtype" and "--set 'train.dtype=fp16'" in str(ei.value)
    assert "'bf16'" in str(ei.value) and "'fp32'" in str(ei.value)
    with pytest.raises(ConfigError, match="unknown key `optim.learning_rate`"):
        load_config(p, Top, ["optim.learning_rate=1"])
    with pytest.raises(ConfigError, match=r"unknown key `train.step`; did you mean `train.steps`\?"):
        load_config(p, Top, ["train.step=1"])
    with pytest.raises(ConfigError) as ei:  # nothing close: no suggestion
        load_config(p, Top, ["train.zzzz=1"])
    assert "did you mean" not in str(ei.value)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(p, Top, ["train.steps"])
    with pytest.raises(ConfigError, match="is a value, not a table"):
        load_config(p, Top, ["train.steps.x=1"])


def test_parse_override_values():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a=1e-3") == ("a", 1e-3)
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=bf16") == ("a", "bf16")
    assert parse_override('a="5"') == ("a", "5")
    assert parse_override("a = [1, 2]") == ("a", [1, 2])


def test_sections_validate_when_built_in_python():
    with pytest.raises(ConfigFieldError, match="`steps`"):
        TrainConfig(steps=0)
    with pytest.raises(ConfigFieldError, match="`min_lr_ratio`"):
        ScheduleConfig(min_lr_ratio=1.5)
    with pytest.raises(ConfigFieldError, match="`keep_last`"):
        CheckpointConfig(keep_last=-1)


def test_sections_that_accept_unknown_keys_are_refused():
    class Loose(msgspec.Struct):
        x: int = 1

    class Bad(ConfigStruct):
        loose: Loose = msgspec.field(default_factory=Loose)

    with pytest.raises(TypeError, match="Loose"):
        load_config(None, Bad, [])


def test_dump_config_round_trips(tmp_path):
    class Extra(ConfigStruct):
        tags: dict[str, int] = {}
        top_level_value: float = 0.5

    class WithExtra(Top):
        extra: Extra = Extra()
        note: str = ""

    cfg = load_config(_write(tmp_path, GOOD), WithExtra, [
        'note="a \\"quoted\\" ü"', "extra.tags={a = 1, b-c = 2}", "train.peak_tflops=12.5",
        "optim.betas=[0.5, 0.25]", "checkpoint.resume=auto"])
    text = dump_config(cfg)
    again = load_config(_write(tmp_path, text, "dumped.toml"), WithExtra, [])
    assert again == cfg
    assert cfg.note == 'a "quoted" ü' and cfg.extra.tags == {"a": 1, "b-c": 2}
    assert dump_config(load_config(None, Top, ["model.name=x"])).count("[train]") == 1
