"""`xt.kernels.optim.AdamWRefresh`'s Triton kernel on CPU under the Triton interpreter (run by
``test_triton_interpreter.py`` in a subprocess with ``TRITON_INTERPRET=1``; skips itself
otherwise). The checks and their tolerances are in ``_optim_cases.py``."""
from __future__ import annotations

import os

import pytest

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
    pytest.skip("run by test_triton_interpreter.py in a subprocess with TRITON_INTERPRET=1", allow_module_level=True)
from _optim_cases import CASE_IDS, CASES  # noqa: E402


@pytest.mark.parametrize("check,dtype", CASES, ids=CASE_IDS)
def test_triton_kernel_against_float64_adamw_and_the_exact_cast(check, dtype):
    check("triton", dtype)
