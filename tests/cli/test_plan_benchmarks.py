"""The H200 scripts of `xt plan` work on the CPU: ``benchmarks/plan/validate_plan.py`` measures a case
the way ``xt train`` steps it and its predicted peak is within 10% of the measured one (the same
``MemTracker`` measurement as tests/parallel/test_parallel_memory_plan.py), and
``measure_rates.py --install`` writes a measured file into a rate table that ``load_rates`` reads
back, leaving the multi-GPU placeholders and refusing a CPU measurement."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "plan"))


def test_validate_plan_on_the_cpu(tmp_path):
    import validate_plan
    assert validate_plan.main(["--device", "cpu", "--cases", "gpt_oss_ac", "--steps", "2", "--out", str(tmp_path)]) == 0
    (out,) = tmp_path.glob("plan-validate-cpu-*.json")
    (row,) = json.loads(out.read_text())["cases"]
    assert row["case"] == "gpt_oss_ac" and row["activation_checkpointing"] == 1.0 and row["within_10pct"]
    pred = row["predicted"]
    assert pred["basis"] == "cpu_math_attention" and pred["xt_plan"]["recompute"] > 0
    assert row["ratio"] == pred["cpu_math_attention"]["total"] / row["measured"]["peak"]
    assert len(row["measured"]["loss"]) == 2 and row["measured"]["params"] > 1e6


def test_measure_rates_install(tmp_path):
    import measure_rates
    from xt.parallel.step_estimate import RATES_FILE, load_rates
    assert measure_rates.main(["--device", "cpu", "--out", str(tmp_path)]) == 0
    (got,) = tmp_path.glob("plan-rates-cpu-*.json")
    table = tmp_path / "table.json"
    shutil.copy(RATES_FILE, table)
    with pytest.raises(ValueError, match="not on a GPU"):
        measure_rates.install(got, table)
    fake = json.loads(got.read_text())
    fake["env"]["device"] = "cuda"
    (tmp_path / "cuda.json").write_text(json.dumps(fake))
    measure_rates.install(tmp_path / "cuda.json", table)
    rates, status = load_rates(table)
    for name in measure_rates.MEASURED:
        assert rates[name][0] == fake["rates"][name]["value"] > 0 and status[name] == "measured"
    assert status["nvlink_gbps"] == status["network_gbps"] == "placeholder"
    assert rates["mfu_4k"] == load_rates()[0]["mfu_4k"]
