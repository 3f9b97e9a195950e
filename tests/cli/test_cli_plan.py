"""`xt plan`: the printed plan of a full-size config, the largest micro-batch, the layout search,
the step estimate against its formula, and user mistakes as one error line."""
from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from xt.cli.main import cli
from xt.cli.plan import run_plan
from xt.parallel import LayoutError
from xt.parallel.memory_plan import GIB, model_facts, plan_memory
from xt.parallel.step_estimate import RATES, measured_mfu

ROOT = Path(__file__).resolve().parents[2]
QWEN = str(ROOT / "examples" / "qwen3_235b_a22b.toml")


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def test_plan_of_qwen3_235b_on_256_gpus():
    console = _quiet()
    (p,) = run_plan(QWEN, world=256, gpu_memory_gib=139, console=console)
    out = console.file.getvalue()
    assert "235.1B parameters on 256 GPUs" in out and "largest micro-batch that fits" in out
    flat = " ".join(out.split())  # the console wraps long lines
    # the interconnect rates are not measured yet, and the plan says so
    assert "nvlink_gbps 360 (placeholder, to be measured on 2-8 H200s" in flat
    assert "network_gbps 40 (placeholder, to be measured on H200 nodes" in flat
    m = p.memory
    # the example's layout, FSDP 256 with EP 8: each EP rank's 16 experts are cut over 32 edp ranks in
    # one-expert rows, so half the ranks hold one expert per layer and half none; rank 0 (planned)
    # holds about twice the mean (tests/parallel/test_parallel_fake_scale.py checks the shards)
    assert m.params == m.grads == m.optimizer // 2
    assert 1.9 < m.params / (4 * 235.09e9 / 256) < 2.1
    assert m.total < 139 * GIB
    # the largest micro-batch is where the prediction crosses the GPU's memory
    from xt.models import build_model
    import tomllib
    model = build_model(tomllib.loads(Path(QWEN).read_text())["model"]["config"], device="meta")
    facts = model_facts(model)
    at = lambda t: plan_memory(facts, p.layout, 256, tokens_per_micro_batch=t).total  # noqa: E731
    assert at(p.max_tokens) <= 139 * GIB < at(p.max_tokens + 1)
    # the step estimate is the documented formula
    flops = model.flops_per_token(4096) * 4096 * (1 + 1.0 / 3)  # the example recomputes every layer
    compute = flops / (RATES["peak_tflops"][0] * 1e12 * measured_mfu(4096))
    assert math.isclose(p.step.compute, compute, rel_tol=1e-12)
    assert math.isclose(p.step.total, p.step.compute + p.step.all_to_all + max(0.0, p.step.fsdp - p.step.compute),
                        rel_tol=1e-12)


def test_search_lists_only_fitting_valid_layouts_fastest_first():
    plans = run_plan(QWEN, world=64, gpu_memory_gib=80, search=True, console=_quiet())
    assert plans
    speeds = [p.step.tokens_per_s_per_gpu for p in plans]
    assert speeds == sorted(speeds, reverse=True)
    for p in plans:
        assert p.memory.total <= 80 * GIB
        assert 128 % p.layout.ep_size == 0 and p.layout.hsdp_replicate * p.layout.resolved_fsdp_size(64) == 64
    assert {p.layout.ep_size for p in plans} >= {8, 16}


def test_mistakes_are_one_error_line(tmp_path):
    r = CliRunner().invoke(cli, ["plan", QWEN, "--world", "0"])
    assert r.exit_code == 1 and "error: --world must be positive" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["plan", QWEN, "--world", "12"])  # fsdp 12 is not a multiple of ep 8
    assert r.exit_code == 1 and "parallel.ep_size (8) must divide parallel.fsdp_size (12)" in r.output
    with pytest.raises(LayoutError):
        run_plan(QWEN, world=12, console=_quiet())
    bad = tmp_path / "bad.toml"
    bad.write_text(Path(QWEN).read_text().replace("\n[parallel]\n", "\n[parallel]\nep_sise = 2\n"))
    r = CliRunner().invoke(cli, ["plan", str(bad), "--world", "8"])
    assert r.exit_code == 1 and "ep_sise" in r.output and "Traceback" not in r.output


def test_rate_table_and_cpu_offload_term(tmp_path):
    """The committed rate table says which rates are placeholders (their source says so too), a rate
    without a value is refused naming it, and ``cpu_offload`` adds the shard's host-device copies:
    ``2 x micro-batches x shard / h2d + shard / d2h`` with ``shard = 4 (dense + expert / ep) / fsdp``."""
    import json

    from xt.parallel.step_estimate import RATE_STATUS, RATES_FILE, load_rates
    assert {k for k, s in RATE_STATUS.items() if s == "measured"} >= {"mfu_4k", "mfu_16k"}
    assert all(RATES[k][1].startswith("placeholder") for k, s in RATE_STATUS.items() if s == "placeholder")
    assert RATE_STATUS["nvlink_gbps"] == RATE_STATUS["network_gbps"] == "placeholder"
    table = json.loads(RATES_FILE.read_text())
    del table["rates"]["hbm_gbps"]["value"]
    (tmp_path / "rates.json").write_text(json.dumps(table))
    with pytest.raises(ValueError, match="rate 'hbm_gbps' needs a numeric 'value'"):
        load_rates(tmp_path / "rates.json")
    (base,) = run_plan(QWEN, ["parallel.cpu_offload=true"], world=256, console=_quiet())
    import tomllib

    from xt.models import build_model
    facts = model_facts(build_model(tomllib.loads(Path(QWEN).read_text())["model"]["config"], device="meta"))
    expert = sum(math.prod(s) for n, s in facts.shapes.items() if n in facts.experts)
    dense = sum(math.prod(s) for s in facts.shapes.values()) - expert
    shard = 4 * (dense + expert / base.layout.ep_size) / 256
    want = 2 * shard / (RATES["h2d_gbps"][0] * 1e9) + shard / (RATES["d2h_gbps"][0] * 1e9)
    assert base.step.offload > 0 and math.isclose(base.step.offload, want, rel_tol=1e-12)
    assert math.isclose(base.step.total, base.step.compute + base.step.all_to_all
                        + max(0.0, base.step.fsdp - base.step.compute) + want, rel_tol=1e-12)

