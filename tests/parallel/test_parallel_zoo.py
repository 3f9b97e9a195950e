"""Other XT families under parallelize equal their single-process run: DeepSeek-V3 (MLA with different
q/k and v head dims, sigmoid group-limited router, shared experts, a dense first layer) and GPT-OSS
(learned attention sinks cut per SP rank, sliding windows, expert biases).

Sizes come from the example configs with a small vocabulary. Auxiliary losses are off and DeepSeek's
multi-token prediction is disabled in the EP x SP cases: both are computed per micro-batch, and MTP
looks one token ahead across the SP slice boundary (not supported under SP). DeepSeek-V3 with MTP
on (its loss in ``aux_loss``) runs under EP without SP, where every rank's micro-batch is whole
and the per-micro-batch MTP loss is the same as in one process: its MTP depths' experts must be
sliced too (they are in the model's parallel plan). SGD with momentum (see
`parallel_cases._optimizer`): with AdamW the first steps amplify fp32 rounding of near-zero gradients."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from parallel_cases import reference_toy
from parallel_layouts import mismatches

pytest.importorskip("xt.models.registry")
pytestmark = pytest.mark.dist

ROOT = Path(__file__).resolve().parents[2]


def _config(name: str, **over) -> dict:
    cfg = tomllib.loads((ROOT / "examples" / name).read_text())["model"]["config"]
    return {**cfg, "vocab_size": 64, **over}


FAMILIES = {
    "deepseek_v3": _config("deepseek_v3_tiny.toml", mtp_layers=0, seq_aux_loss_coef=0.0, initializer_range=0.2),
    "gpt_oss": _config("gpt_oss_tiny.toml", router_aux_loss_coef=0.0, sliding_window=6, initializer_range=0.2),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("layout", [dict(ep_size=2, sp_size=2, activation_checkpointing=0.5), dict(ep_size=4, sp_size=4)])
def test_family_matches_single_process(pools, family, layout):
    dp = 4 // layout["sp_size"]
    docs = [[[9, 14, 2], [13, 5], [4, 4, 3], [17]][:dp], [[11, 3], [6, 6], [9], [2, 8]][:dp]]
    spec = dict(fn="parallel_cases:run_toy", builder="xt_registry", model=FAMILIES[family], seed=9, skew="none",
                docs=docs, lr=1e-2, max_norm=1.0, optim="sgd",
                layout=dict(layout, param_dtype=None, reduce_dtype=None))
    bad = mismatches(pools(4).run(spec), reference_toy(spec))
    assert not bad, "\n".join(bad[:20])


def test_deepseek_mtp_under_ep_matches_single_process(pools):
    """DeepSeek-V3 with two MTP depths (MTP loss weight 0.3 in the objective), EP 4 over world 4 with
    AC: equal to one process, and every MTP expert module is EP-sliced like the main layers'."""
    model = _config("deepseek_v3_tiny.toml", mtp_layers=2, seq_aux_loss_coef=0.0, initializer_range=0.2)
    docs = [[[9, 14, 2], [13, 5], [4, 4, 3], [17]], [[11, 3], [6, 6], [9], [2, 8]]]
    spec = dict(fn="parallel_cases:run_toy", builder="xt_registry", model=model, seed=9, skew="none", docs=docs,
                lr=1e-2, max_norm=1.0, optim="sgd", aux_loss=True,
                layout=dict(ep_size=4, activation_checkpointing=0.5, param_dtype=None, reduce_dtype=None))
    got, ref = pools(4).run(spec), reference_toy(spec)
    assert {"mtp.0.mlp.experts", "mtp.1.mlp.experts"} <= set(got["ep_sliced"]), got["ep_sliced"]
    bad = mismatches(got, ref)
    assert not bad, "\n".join(bad[:20])
