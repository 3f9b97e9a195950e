"""benchmarks/multi_gpu/run.py on the CPU: the correctness stage at world 2 (gloo) passes, and
fails with the errors it measured when the reference is off; the scaling stage's runs, table and
JSON on fake metrics.jsonl files (no training: `run_logged` is replaced)."""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
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


class _Borrowed:
    """A session pool (the ``pools`` fixture) lent to run.py, which closes each pool it makes: the
    close is a no-op, so the session keeps it (a fresh world-2 and world-1 pool per stage cost
    ~8 s of each correctness test on a 2-core CPU; the cases and the DCP hand-over are the same)."""

    def __init__(self, pool) -> None:
        self.pool = pool

    def run(self, spec: dict, timeout: float = 180.0):
        return self.pool.run(spec, timeout)

    def close(self) -> None:
        pass


@pytest.fixture
def session_pools(pools, monkeypatch):
    """run.py's ``Pool(world, backend)`` answered by the session's gloo pools."""
    import parallel_harness
    got = {world: pools(world) for world in (1, 2)}  # started (if not yet) before Pool is replaced
    monkeypatch.setattr(parallel_harness, "Pool", lambda world, backend="gloo": _Borrowed(got[world]))


def test_correctness_world2_agrees_and_reports_its_errors(tmp_path, session_pools):
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


def test_correctness_fails_when_a_case_disagrees(tmp_path, monkeypatch, session_pools):
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


# --- comm stage ------------------------------------------------------------------------------------------

sys.path.insert(0, str(_PATH.parents[2] / "benchmarks" / "plan"))
import comm_bench  # noqa: E402  (benchmarks/multi_gpu, on the path since run.py was loaded)
import measure_rates  # noqa: E402


@pytest.fixture(scope="module")
def comm_file(tmp_path_factory) -> Path:
    """The comm stage at world 2 on the CPU (gloo), run once for the tests below."""
    folder = tmp_path_factory.mktemp("comm")
    assert run.main(["--world", "2", "--stages", "comm", "--out-dir", str(folder)]) == 0
    (path,) = folder.glob("multi-gpu-comm-cpu-w2-*.json")
    return path


def test_comm_stage_world2_bandwidths_and_rates_block(comm_file):
    got = json.loads(comm_file.read_text())
    assert (got["world"], got["backend"], got["dtype"], got["skipped"]) == (2, "gloo", "float32", [])
    assert [(r["op"], r["bytes"]) for r in got["rows"]] == [(op, s) for s in comm_bench.CPU_SIZES for op in comm_bench.OPS]
    for r in got["rows"]:  # nccl-tests: algbw = size / time, busbw = algbw (N - 1) / N = algbw / 2
        assert r["seconds"] > 0 and r["algbw_gbps"] == pytest.approx(r["bytes"] / r["seconds"] / 1e9, rel=1e-12)
        assert r["busbw_gbps"] == pytest.approx(r["algbw_gbps"] / 2, rel=1e-12) and r["busbw_gbps"] > 0
    # the rates block is measure_rates.py's format; nvlink_gbps = the smallest busbw at the largest size (<= 256 MiB)
    assert got["format"] == measure_rates.FORMAT and got["env"]["device"] == "cpu" and got["env"]["world"] == 2
    (name,) = got["rates"]
    rate = got["rates"][name]
    low = min(r["busbw_gbps"] for r in got["rows"] if r["bytes"] == 256 << 10)
    assert name == "nvlink_gbps" and rate["value"] == float(f"{low:.4g}") and rate["unit"] == "GB/s"
    assert rate["status"] == "measured" and comm_file.name in rate["source"]
    assert len(got["table"].splitlines()) == 1 + len(got["rows"])


def test_bus_bandwidth_formula_by_hand():
    # 1 GiB all-gathered on 8 ranks in 10 ms: algbw 2^30 / 0.01 / 1e9 = 107.3741824 GB/s, busbw x 7/8
    assert comm_bench.bandwidths("all_gather", 1 << 30, 0.01, 8) == pytest.approx((107.3741824, 93.9524096), rel=1e-12)
    assert comm_bench.bandwidths("reduce_scatter", 1 << 28, 0.002, 4) == pytest.approx((134.217728, 100.663296), rel=1e-12)
    assert comm_bench.bandwidths("all_to_all", 10**9, 1.0, 2) == pytest.approx((1.0, 0.5), rel=1e-12)
    with pytest.raises(ValueError, match="at least 2 ranks"):
        comm_bench.bus_factor("all_gather", 1)
    with pytest.raises(ValueError, match="all_reduce"):
        comm_bench.bus_factor("all_reduce", 8)
    # the planner's pick: the slowest op at 256 MiB, not at 1 GiB or 64 MiB
    rows = [{"op": op, "bytes": s << 20, "busbw_gbps": bw + s} for s in (64, 256, 1024)
            for op, bw in zip(comm_bench.OPS, (300.0, 280.0, 250.0))]
    assert comm_bench.planner_rate(rows) == {"bytes": 256 << 20, "op": "all_to_all", "busbw_gbps": 506.0}


def test_install_comm_file_changes_only_nvlink(comm_file, tmp_path):
    from xt.parallel.step_estimate import RATES_FILE, load_rates
    table = tmp_path / "table.json"
    shutil.copy(RATES_FILE, table)
    before = table.read_bytes()
    with pytest.raises(ValueError, match="not on a GPU"):  # the CPU's gloo file
        measure_rates.install(comm_file, table)
    fake = json.loads(comm_file.read_text())
    fake["env"]["device"] = "cuda"
    fake["rates"]["nvlink_gbps"].update(value=371.5, source="fake x8 comm file")
    empty = dict(fake, rates={})
    (tmp_path / "empty.json").write_text(json.dumps(empty))
    with pytest.raises(ValueError, match="none of the planner's measured rates"):
        measure_rates.install(tmp_path / "empty.json", table)
    assert table.read_bytes() == before
    (tmp_path / "cuda.json").write_text(json.dumps(fake))
    measure_rates.install(tmp_path / "cuda.json", table)
    old, new = json.loads(before)["rates"], json.loads(table.read_text())["rates"]
    assert new.pop("nvlink_gbps") == fake["rates"]["nvlink_gbps"] and old.pop("nvlink_gbps")["status"] == "placeholder"
    assert new == old
    rates, status = load_rates(table)
    assert rates["nvlink_gbps"] == (371.5, "fake x8 comm file") and status["nvlink_gbps"] == "measured"
    assert status["network_gbps"] == "placeholder"
