"""World-4 proof of issue 13 (CPU, gloo): a Qwen3-MoE whose full fp32 training state (weights, gradients
and the optimizer's momentum: 12 bytes a parameter; SGD with momentum, whose update is linear in the
gradient, so that 1e-5 against one process means something in fp32) is larger than what any one rank
may hold is built on meta,
loads an HF checkpoint sharded (each rank reads ~1/4 of it), trains 2 steps equal to one process, and
exports an HF folder (streamed, each rank writing its files) that transformers loads with the
single-process model's logits. Every rank's allocations are tracked (``MemTracker``) from before the
build to after the export, and each stays under the budget."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch

from proof_cases import proof_batches, proof_optimizer

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.dist
WORLD, BUDGET_SHARE = 4, 0.5  # a rank may hold at most half the full training state


def test_world4_meta_build_sharded_load_train_and_export(pools, tmp_path):
    from transformers import AutoModelForCausalLM

    from xt.core.engine.loss import count_label_tokens, micro_batch_objective
    from xt.models import build_model, from_pretrained, save_pretrained
    cfg = {**tomllib.loads((ROOT / "examples" / "qwen3_moe_shakespeare.toml").read_text())["model"]["config"],
           "vocab_size": 512, "tie_word_embeddings": False}
    torch.manual_seed(11)
    save_pretrained(build_model(cfg, attn_backend="sdpa"), tmp_path / "hf", max_shard_size="4MB")
    spec = dict(fn="proof_cases:run_proof", model=cfg, hf=str(tmp_path / "hf"), out=str(tmp_path / "out"), seed=2,
                vocab=512, docs=[40, 24], lr=0.5, layout=dict(ep_size=2, param_dtype=None, reduce_dtype=None))
    got = pools(WORLD).run(spec)

    ref = from_pretrained(tmp_path / "hf", dtype=torch.float32, attn_backend="sdpa")  # one process, whole
    n_params = sum(p.numel() for p in ref.parameters())
    state_bytes = 12 * n_params
    budget = BUDGET_SHARE * state_bytes
    print(f"full fp32 training state {state_bytes / 2**20:.1f} MiB, budget {budget / 2**20:.1f} MiB, "
          f"per-rank tracked peaks {[round(p / 2**20, 1) for p in got['peaks']]} MiB, "
          f"bytes read {[round(b / 2**20, 2) for b in got['bytes_read']]} MiB")
    assert all(p <= budget for p in got["peaks"]), (got["peaks"], budget)
    weights = 4 * n_params
    assert all(b <= weights / WORLD * 1.1 + 8192 for b in got["bytes_read"]) and sum(got["bytes_read"]) >= weights

    opt = proof_optimizer(ref.parameters(), spec)
    losses = []
    for step in range(2):
        batches = proof_batches(spec, step, WORLD)
        n_tok = count_label_tokens(batches, torch.device("cpu"))
        loss = sum(micro_batch_objective(ref(**b), n_tok, 1, WORLD) for b in batches)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    assert got["losses"] == pytest.approx(losses, rel=1e-5)
    out = from_pretrained(tmp_path / "out", attn_backend="sdpa")
    for name, p in ref.named_parameters():
        q = out.get_parameter(name)
        assert (q - p).norm() <= 1e-5 * p.norm() + 1e-7, name
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    ids = torch.randint(0, 512, (1, 32), generator=torch.Generator().manual_seed(1))
    ref.eval()
    with torch.no_grad():
        want = ref(ids[0], return_logits=True).logits
        logits = hf(ids).logits[0]
    assert (logits - want).norm() / want.norm() < 1e-5
