"""benchmarks/multi_gpu/run.py on the CPU: the correctness stage at world 2 (gloo) passes, and
fails with the errors it measured when the reference is off; the scaling stage's runs, table and
JSON on fake metrics.jsonl files (no training: `run_logged` is replaced)."""
from __future__ import annotations

import importlib.util
import json
import re
import statistics
from pathlib import Path

import pytest

import parallel_cases

pytestmark = pytest.mark.dist

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "multi_gpu" / "run.py"
_spec = importlib.util.spec_from_file_location("multi_gpu_run", _PATH)
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)


def _stage_json(folder: Path, stage: str) -> dict:
    (path,) = folder.glob(f"multi-gpu-{stage}-cpu-w2-*.json")
    return json.loads(path.read_text())


def test_correctness_world2_agrees_and_reports_its_errors(tmp_path):
    rc = run.main(["--world", "2", "--stages", "correctness", "--cases", "ep_sp_ac,dcp_resume_half",
                   "--out-dir", str(tmp_path)])
    got = _stage_json(tmp_path, "correctness-float32")
    assert rc == 0 and got["ok"] and got["tol"] == 1e-5 and got["dtype"] == "float32"
    assert [c["case"] for c in got["cases"]] == ["ep_sp_ac", "dcp_resume_half"]  # EP x SP x AC, one-expert skew
    for c in got["cases"]:
        assert 0.0 <= c["max_err"] <= 1e-5 and not c["bad"], c
    assert got["cases"][0]["compared"] > 40  # 2 losses, 2 norms, every gradient and parameter
    dcp = got["cases"][1]
    assert (dcp["saved_on"], dcp["resumed_on"]) == (2, 1)
    assert abs(dcp["next_loss_resumed"] - dcp["next_loss_saver"]) <= 1e-5 * dcp["next_loss_saver"]


def test_correctness_fails_when_a_case_disagrees(tmp_path, monkeypatch):
    """A reference taking 1.5x the learning rate (a stand-in for a sharding bug) must fail the stage."""
    real = parallel_cases.reference_toy
    monkeypatch.setattr(parallel_cases, "reference_toy", lambda spec: real(dict(spec, lr=spec["lr"] * 1.5)))
    rc = run.main(["--world", "2", "--stages", "correctness", "--cases", "fsdp", "--out-dir", str(tmp_path)])
    (case,) = _stage_json(tmp_path, "correctness-float32")["cases"]
    assert rc == 1 and case["max_err"] > 1e-3 and case["max_err_at"].startswith("params.")
    assert case["bad"] and all(b.startswith(("params.", "loss[1]", "grad_norm[1]")) for b in case["bad"])


def test_scaling_stage_table_and_json_on_fake_metrics(tmp_path, monkeypatch):
    """8 ranks, Qwen3-30B-A3B: each case's metrics.jsonl (6 steps, tokens/s by case) is summarised
    after 2 warm-up steps; the table carries tokens/s/GPU, MFU and peak next to the anchors."""
    calls = []

    def fake_run_logged(cmd, log, timeout):
        calls.append(cmd)
        sets = dict(a.split("=", 1) for a in cmd[cmd.index("train") + 3::2])
        ep = int(sets["parallel.ep_size"])
        out = Path(json.loads(sets["train.out_dir"]))
        out.mkdir(parents=True)
        rows = [{"step": i + 1, "loss": 12.0 - i, "tokens_per_s": (8000.0 * ep if i >= 2 else 100.0) + i,
                 "mfu": 0.1 * ep + 0.002 * i, "max_memory_gib": 60.0 + i, "step_time_s": 2.0 - 0.01 * i,
                 "num_tokens": 131072, "seq_len": 4096} for i in range(6)]
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        log.write_text("fake\n")
        return 0, 1.0

    monkeypatch.setattr(run, "run_logged", fake_run_logged)
    args = run.parse_args(["--world", "8", "--stages", "scaling", "--out-dir", str(tmp_path)])
    out = tmp_path / "scaling.json"
    run.stage_scaling(args, run.Budget(1e9), out)
    got = json.loads(out.read_text())
    names = [r["case"] for r in got["rows"]]
    assert names == ["4k_ep1", "4k_ep2", "4k_ep4", "4k_ep8", "16k_ep1", "16k_ep2", "16k_ep4", "16k_ep8", "64k_sp8"]
    assert all("--nproc-per-node=8" in c for c in calls)
    assert all("model.config.num_hidden_layers=48" in c and "model.config.num_experts=128" in c for c in calls)
    r = got["rows"][3]  # 4k, EP 8
    assert r["tokens_per_s_per_gpu"] == statistics.median([64002.0, 64003.0, 64004.0, 64005.0]) / 8
    assert r["mfu"] == pytest.approx(statistics.median([0.804, 0.806, 0.808, 0.810]))
    assert r["peak_gib"] == 65.0 and r["steps_done"] == 6
    assert "parallel.sp_size=8" in got["rows"][-1]["overrides"]
    table = got["table"].splitlines()
    assert re.search(r"4k_ep8\s+8\s+8,000\s+80\.7\s+65\.0", table[4]), table[4]
    assert any("NeMo Automodel" in t and "12,000" in t and "28.0" in t for t in table)
    assert any("torchtitan" in t and "27.6" in t for t in table)
    assert not list(tmp_path.glob(".*tmp*"))  # written through a temp file and renamed
