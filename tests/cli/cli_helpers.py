"""Helpers shared by the `xt` command tests: run the command (in a subprocess or in this process),
pass `--set` items, wait for a file."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

#: `--set` items that keep a test run short: no HF export, no greedy sample
QUICK = ["checkpoint.hf_export=false", "sample.max_new_tokens=0"]


def xt_run(*args: str, env: dict[str, str] | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    """Run `python -m xt.cli.main ARGS` (stdout, stderr captured as text; XT_DEBUG unset)."""
    full_env = {k: v for k, v in os.environ.items() if k != "XT_DEBUG"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "xt.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def xt_invoke(*args: str, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    """Run `xt ARGS` in this process through click's `CliRunner` (no interpreter start-up: ~3-5 s
    less than `xt_run`), XT_DEBUG unset unless `env` sets it (a None value unsets a variable).

    Returns what `xt_run` returns: a `CompletedProcess` with the exit status as ``returncode`` and
    the command's stdout and stderr as text. An exception that the command does not turn into an
    exit status (a bug, or any error under ``--debug``) propagates: the test fails with it, as
    the subprocess would have shown a traceback.
    """
    from click.testing import CliRunner

    from xt.cli.main import cli
    # `xt train` sets PYTORCH_CUDA_ALLOC_CONF when unset: listed here, CliRunner restores it after
    keep = {"XT_DEBUG": None, "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")}
    r = CliRunner().invoke(cli, list(args), env={**keep, **(env or {})}, prog_name="xt", catch_exceptions=False)
    return subprocess.CompletedProcess(["xt", *args], r.exit_code, r.stdout, r.stderr)


#: runs several `xt` commands in one interpreter (`xt_runs`, tests/cli/test_torchrun.py)
XT_COMMANDS = Path(__file__).resolve().with_name("xt_commands.py")


def xt_runs(commands: list[list[str]], env: dict[str, str] | None = None, timeout: int = 600,
            each_env: list[dict[str, str | None]] | None = None) -> list[subprocess.CompletedProcess]:
    """Run the `xt` commands `commands` one after the other in one fresh interpreter: a subprocess
    (`env` applies before torch starts, and a process group one creates stays there), one start-up
    for all. XT_DEBUG and the torchrun variables unset; `each_env[i]`, if given, is set (None:
    unset) for command i only, as it runs (not for what was read at import).

    Returns:
        One `CompletedProcess` per command (exit status, stdout, stderr), as `xt_invoke` gives.

    Raises:
        AssertionError: the interpreter failed (an exception a command did not turn into an exit
            status: its traceback is the message).
    """
    import json
    drop = ("XT_DEBUG", "RANK", "WORLD_SIZE", "LOCAL_RANK")
    full_env = {**{k: v for k, v in os.environ.items() if k not in drop}, **(env or {})}
    jobs = list(zip(commands, each_env or [{}] * len(commands), strict=True))
    r = subprocess.run([sys.executable, str(XT_COMMANDS), json.dumps(jobs)], capture_output=True, text=True,
                       timeout=timeout, env=full_env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return [subprocess.CompletedProcess(["xt", *c], code, out, err)
            for c, (code, out, err) in zip(commands, json.loads(r.stdout.splitlines()[-1]))]


def set_args(items: list[str]) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]``."""
    return [a for item in items for a in ("--set", item)]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Poll until `path` exists; fail with the process's output if it ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def metric_rows(out_dir: Path) -> list[dict]:
    """The records of ``out_dir/metrics.jsonl``, in file order."""
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def signal_mid_run(args: list[str], wait_path: Path, sig: int) -> tuple[int, str, str]:
    """Start `python -m xt.cli.main ARGS`, send `sig` once `wait_path` exists, and wait for the end.

    The child starts with SIGINT at its default: a test run from a background shell job inherits
    SIGINT ignored, and Python would then install no handler for it.

    Returns:
        (exit status, stdout, stderr).
    """
    proc = subprocess.Popen([sys.executable, "-m", "xt.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for(wait_path, proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err
