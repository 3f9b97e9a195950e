"""Runs the Triton-interpreter cases (``triton_interp_cases.py``, ``triton_interp_log_probs.py``,
``triton_interp_optim.py``) in
a fresh Python process each.

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


@pytest.mark.parametrize("cases", ["triton_interp_cases.py", "triton_interp_log_probs.py", "triton_interp_optim.py"])
def test_triton_kernels_under_interpreter(cases):
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    r = subprocess.run([sys.executable, "-m", "pytest", str(HERE / cases), "-q", "-p", "no:cacheprovider", "-rs"],
                       env=env, capture_output=True, text=True, timeout=600, cwd=str(HERE.parents[1]))
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout.splitlines()[-1], r.stdout[-2000:]
