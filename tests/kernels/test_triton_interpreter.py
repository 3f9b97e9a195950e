"""Runs the Triton-interpreter cases (``triton_interp_cases.py``, ``triton_interp_log_probs.py``,
``triton_interp_optim.py``) in
one fresh Python process (one process for the three files: each start imports torch, Triton and
xt, ~10 s of the ~40 s that three processes took on a 2-core CPU).

Triton reads ``TRITON_INTERPRET`` when it is first imported (its standard-library functions are
decorated then) and again when a kernel runs; other tests in this process may already have
imported Triton without it (``torch.compile`` does). A subprocess with the variable set keeps the
interpreter runs correct and leaves this process's environment alone.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("triton")
HERE = pathlib.Path(__file__).parent


FILES = ["triton_interp_cases.py", "triton_interp_log_probs.py", "triton_interp_optim.py"]


@pytest.fixture(scope="module")
def interpreter_run():
    """The three case files run by one ``pytest -rA`` subprocess with ``TRITON_INTERPRET=1``."""
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return subprocess.run([sys.executable, "-m", "pytest", *[str(HERE / f) for f in FILES], "-q", "-p",
                           "no:cacheprovider", "-rA"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=str(HERE.parents[1]))


@pytest.mark.parametrize("cases", FILES)
def test_triton_kernels_under_interpreter(interpreter_run, cases):
    r = interpreter_run
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout.splitlines()[-1], r.stdout[-2000:]
    mine = [line for line in r.stdout.splitlines() if f"{cases}::" in line]
    assert mine and all(line.startswith("PASSED ") for line in mine), "\n".join(mine) or r.stdout[-2000:]
