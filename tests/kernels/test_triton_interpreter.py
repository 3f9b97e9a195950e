"""Runs the Triton-interpreter cases (``triton_interp_cases.py``) in a fresh Python process.

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
CASES = pathlib.Path(__file__).with_name("triton_interp_cases.py")


def test_triton_kernels_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    r = subprocess.run([sys.executable, "-m", "pytest", str(CASES), "-q", "-p", "no:cacheprovider", "-rs"],
                       env=env, capture_output=True, text=True, timeout=600, cwd=str(CASES.parents[2]))
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout.splitlines()[-1], r.stdout[-2000:]
