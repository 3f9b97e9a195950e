"""User mistakes end with one `error: ...` line and a non-zero exit, never a traceback.

Each case runs `xt train` on the tiny config of conftest.py (`tiny_run`) with one mistake and
checks the exit status, the message (key, file and line where they apply) and that no Python
traceback is printed. `--debug` / `XT_DEBUG=1` do print it. Most cases run the command in this
process (`xt_invoke`: the same click command and error handling, without ~3-5 s of interpreter
and torch start-up each); a subprocess is kept where the process is what is tested: the
unknown-tokenizer cases (the hub environment is read at import; `xt_runs`, both in one
interpreter), `--debug`'s printed traceback (`xt_run`, the real entry point) and Ctrl-C.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from xt.cli.main import cli

from cli_helpers import QUICK, set_args as _sets, signal_mid_run, xt_invoke as _xt, xt_run, xt_runs


def _user_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """Check a clean user error: status 1, one `error:` line on stderr holding `needles`, no traceback."""
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "Traceback" not in out, out
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


def _variant(cfg: Path, name: str, lines: dict[str, str | None], head: str | None = None) -> Path:
    """A copy of config `cfg` named `name` whose `KEY = ...` lines are replaced by `lines[KEY]`
    (None drops the line); `head` replaces everything before ``[data]``."""
    text = cfg.read_text()
    if head is not None:
        text = head + text[text.index("[data]"):]
    out = []
    for line in text.splitlines():
        key = line.split("=")[0].strip()
        if key in lines:
            if lines[key] is not None:
                out.append(lines[key])
        else:
            out.append(line)
    path = cfg.with_name(name)
    path.write_text("\n".join(out) + "\n")
    return path


def _line(path: Path, needle: str) -> int:
    """1-based line of the first line of `path` that contains `needle`."""
    return next(i for i, t in enumerate(path.read_text().splitlines(), 1) if needle in t)


@pytest.mark.parametrize("lines, field, what", [
    ({"hidden_size": 'hidden_size = "big"'}, "hidden_size", "Expected `int`, got `str`"),
    ({"num_experts_per_tok": "num_experts_per_tok = 5"}, "num_experts_per_tok", "num_experts=4"),
    ({"num_attention_heads": "num_attention_heads = 3", "num_key_value_heads": "num_key_value_heads = 3",
      "head_dim": None}, "num_attention_heads", "must divide hidden_size=32"),
    ({"architectures": 'architectures = ["FooForCausalLM"]', "model_type": 'model_type = "foo"'},
     "architectures", "known architectures"),
], ids=["wrong-type", "topk-over-experts", "heads-vs-hidden", "unknown-architecture"])
def test_bad_model_config_names_key_file_and_line(tiny_run: Path, lines, field, what):
    bad = _variant(tiny_run, "bad_model.toml", lines)
    _user_error(_xt("train", str(bad)), f"model.config.{field}", f"bad_model.toml:{_line(bad, field)}", what)


def test_bad_model_config_from_set_names_the_override(tiny_run: Path):
    r = _xt("train", str(tiny_run), "--set", "model.config.num_experts_per_tok=8")
    _user_error(r, "--set 'model.config.num_experts_per_tok=8'", "model.config.num_experts_per_tok", "got 8")


def _bad_jsonl(tmp: Path) -> Path:
    good = [json.dumps({"text": f"record {i}"}) for i in range(4)]
    (tmp / "bad.jsonl").write_text("\n".join(good[:2] + ['{"text": oops}'] + good[2:]) + "\n")
    return tmp / "bad.jsonl"


def _bad_bytes(tmp: Path) -> Path:
    (tmp / "latin.txt").write_bytes(b"caf\xe9 au lait\n")
    return tmp / "latin.txt"


def _empty(tmp: Path) -> Path:
    (tmp / "empty.jsonl").write_text("\n\n")
    return tmp / "empty.jsonl"


def _unreadable(tmp: Path) -> Path:
    (tmp / "secret.jsonl").write_text('{"text": "hidden"}\n')
    (tmp / "secret.jsonl").chmod(0)
    return tmp / "secret.jsonl"


@pytest.mark.parametrize("make, needles", [
    (_bad_jsonl, ["bad.jsonl:3", "invalid JSON"]),
    (_bad_bytes, ["latin.txt:1", "cannot decode as utf-8", "data.encoding"]),
    (_empty, ["data.paths", "no documents", "empty.jsonl"]),
    (lambda tmp: tmp / "missing.jsonl", ["data.paths", "missing.jsonl", "does not exist"]),
    pytest.param(_unreadable, ["secret.jsonl", "cannot read", "Permission denied"],
                 marks=pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                                          reason="root reads any file")),
], ids=["malformed-json", "undecodable", "empty", "missing", "unreadable"])
def test_bad_data_names_file_and_line(tiny_run: Path, tmp_path: Path, make, needles):
    data = make(tmp_path)
    bad = _variant(tiny_run, "bad_data.toml", {"paths": f'paths = ["{data}"]'})
    msg = _user_error(_xt("train", str(bad)), *needles)
    if "data.paths" in needles:  # a [data] key: where it is set in the TOML file
        assert f"bad_data.toml:{_line(bad, 'paths =')}" in msg


@pytest.mark.parametrize("setting", ["data", "model"])
def test_mistakes_fail_before_the_model_is_built(tiny_run: Path, tmp_path: Path, monkeypatch, setting):
    """Fail fast: bad data and a bad [model.config] are found before `run_model_source`."""
    import xt.cli.train as train_mod
    monkeypatch.setattr(train_mod, "run_model_source", lambda *a, **k: pytest.fail("model was built"))
    override = (f"data.paths=['{_bad_jsonl(tmp_path)}']" if setting == "data"
                else "model.config.num_experts_per_tok=9")
    r = CliRunner().invoke(cli, ["train", str(tiny_run), "--set", override])
    assert r.exit_code == 1 and "error: " in r.output and ("bad.jsonl:3" if setting == "data" else "got 9") in r.output


@pytest.mark.parametrize("target, needle", [("nowhere", "no such folder"), ("empty_dir", "is not a checkpoint folder")],
                         ids=["missing", "not-a-checkpoint"])
def test_init_from_that_is_not_a_checkpoint_folder(tiny_run: Path, tmp_path: Path, target, needle):
    (tmp_path / "empty_dir").mkdir()
    bad = _variant(tiny_run, "init.toml", {}, head=f'[model]\ninit_from = "{tmp_path / target}"\n\n')
    _user_error(_xt("train", str(bad)), "model.init_from", f"init.toml:{_line(bad, 'init_from')}", needle)


@pytest.mark.parametrize("target, needle", [
    ("nowhere", "does not exist"),
    ("run/checkpoints/step-2.tmp", "is not a complete checkpoint"),
], ids=["missing", "unfinished-save"])
def test_resume_path_that_is_not_a_checkpoint(tiny_run: Path, tmp_path: Path, target, needle):
    (tmp_path / "run" / "checkpoints" / "step-2.tmp").mkdir(parents=True)  # an unfinished save
    _user_error(_xt("train", str(tiny_run), "--resume", str(tmp_path / target)), "resume", needle)


def test_ctrl_c_saves_a_checkpoint_and_exits_75(tiny_run: Path, tmp_path: Path):
    """SIGINT mid-run: the step under way finishes and is checkpointed, exit 75 (not 130), no
    traceback, the command to continue is printed, and `--resume auto` continues from it (in this
    process: the signal needs the subprocess, the resume does not). One micro-batch a step."""
    sets = _sets(QUICK + ["train.steps=100000", "checkpoint.every_steps=1", "train.micro_batches_per_step=1"])
    code, out, err = signal_mid_run(["train", str(tiny_run), *sets],
                                    tmp_path / "run" / "checkpoints" / "step-1" / "meta.json", signal.SIGINT)
    assert code == 75, out + err
    assert "Traceback" not in out + err, out + err
    from xt.core.checkpoint import latest_checkpoint
    last = latest_checkpoint(tmp_path / "run")
    step = int(last.name.split("-")[1])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == step  # the last finished step is the one checkpointed
    assert f"stopped by SIGINT after step {step} of 100000; checkpoint {last}" in out, out
    assert "continue with: xt train" in out and "--resume auto" in out
    r = _xt("train", str(tiny_run), "--resume", "auto",
            *_sets(QUICK + [f"train.steps={step + 1}", "train.micro_batches_per_step=1", "checkpoint.every_steps=0",
                            "checkpoint.save_final=false"]))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"resumed from {last} at step {step}" in r.stdout
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == step + 1


def test_checkpoint_of_another_model_shape_is_refused(tiny_run: Path, tmp_path: Path):
    from xt.cli.train import run_train
    result = run_train(tiny_run, QUICK + ["train.steps=1", "checkpoint.every_steps=1"],
                       console=Console(file=io.StringIO()))
    r = _xt("train", str(tiny_run), "--resume", str(result.checkpoint),
            "--set", "model.config.moe_intermediate_size=32")
    _user_error(r, str(result.checkpoint), "another shape", "experts", "in the checkpoint", "in this model")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(tiny_run: Path, how):
    """``--debug``: the real entry point prints the traceback (a subprocess); ``XT_DEBUG=1``: the
    error propagates out of the command (in this process), and its traceback is the one printed."""
    args = (str(tiny_run), "--set", "model.config.num_experts_per_tok=9")
    if how == "flag":
        r = xt_run("--debug", "train", *args)
        assert r.returncode != 0
        stderr = r.stderr
    else:
        import traceback
        with pytest.raises(Exception) as e:
            _xt("train", *args, env={"XT_DEBUG": "1"})
        stderr = "".join(traceback.format_exception(e.value))
    assert "Traceback" in stderr and "ModelConfigError" in stderr and "num_experts_per_tok" in stderr


def test_help_documents_debug():
    r = CliRunner().invoke(cli, ["--help"])
    assert r.exit_code == 0 and "--debug" in r.output and "XT_DEBUG=1" in r.output


def test_unused_model_keys_warning_keeps_the_section_name(tiny_run: Path, monkeypatch):
    """rich would swallow `[model.config]` as markup; the warning must print it."""
    import xt.cli.train as train_mod

    class Built(Exception):
        pass

    def stop(*a, **k):
        raise Built
    monkeypatch.setattr(train_mod, "run_model_source", stop)
    buf = io.StringIO()
    with pytest.raises(Built):
        train_mod.run_train(tiny_run, ["model.config.num_expert=8"], console=Console(file=buf, width=300))
    assert "[model.config] keys that this model family does not read" in buf.getvalue()
    assert "num_expert" in buf.getvalue()


def test_user_errors_share_one_hierarchy():
    from xt.core.config import ConfigError
    from xt.core.errors import CheckpointError, XTError
    from xt.data import AssetError, DataError
    from xt.models import ConfigError as ModelsConfigError
    from xt.models import ModelConfigError
    from xt.parallel import LayoutError
    assert ModelsConfigError is ModelConfigError and issubclass(ModelConfigError, ConfigError)
    for cls in (ConfigError, ModelConfigError, DataError, AssetError, LayoutError, CheckpointError):
        assert issubclass(cls, XTError) and issubclass(cls, ValueError), cls


def test_missing_files_are_one_error_line(tmp_path: Path):
    """A config or conversion source that does not exist: exit 1 and one `error:` line (not
    click's usage text and exit 2)."""
    r = _xt("train", str(tmp_path / "nope.toml"))
    _user_error(r, "config file not found", "nope.toml")
    assert "Usage:" not in r.stderr
    _user_error(_xt("convert", str(tmp_path / "nope_src"), str(tmp_path / "dst")), "nope_src", "does not exist")


CASES = [("qwen2", {"HF_HUB_OFFLINE": None}, "not in the local hub cache"),
         ("someone/no-such-tokenizer", {"HF_HUB_OFFLINE": "1"}, "the hub is switched off")]


def test_unknown_tokenizer_fails_at_once_listing_the_built_ins(tiny_run: Path, tmp_path: Path):
    """Not built-in, not a folder, not in the hub cache: one error line naming the key, the value
    and the built-in names, without asking the hub (before: 51 s of retries, then a traceback).
    Both cases in one subprocess with an empty HF_HOME (read at import); HF_HUB_OFFLINE per case
    (read as the tokenizer is looked up). Both within 30 s, interpreter start-up included."""
    t0 = time.monotonic()
    done = xt_runs([["train", str(tiny_run), "--set", f"data.tokenizer='{name}'"] for name, _, _ in CASES],
                   env={"HF_HOME": str(tmp_path / "empty_hf_home")}, each_env=[env for _, env, _ in CASES])
    lines = [_user_error(r, "data.tokenizer", repr(name), "llama3, qwen3", why, "--set")
             for r, (name, _, why) in zip(done, CASES)]
    assert time.monotonic() - t0 < 30, lines
