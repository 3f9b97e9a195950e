"""Llama, GPT-OSS, DeepSeek-V3 and a scaled-down Kimi K2 against HF transformers (fp32, CPU).

For every architecture: packed multi-document logits equal HF run on each document alone, plain
[B, S] batches equal HF's batch, HF checkpoint -> ours -> HF checkpoint is bit-exact, and one
training step's gradients equal HF's for the same loss.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from zoo_helpers import ARCHS, converter, hf_and_ours, pack, random_docs, rel_err

TOL = 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_packed_documents_equal_hf_run_alone(tmp_path, arch):
    hf, ours = hf_and_ours(tmp_path, arch)
    docs = random_docs([7, 13, 2, 9])  # longer than GPT-OSS's window (4) and the YaRN original length
    out = ours(**pack(docs), return_logits=True)
    with torch.no_grad():
        ref = torch.cat([hf(d[None]).logits[0] for d in docs])
    assert out.logits.shape == ref.shape
    assert rel_err(out.logits, ref) <= TOL
    # each document also equals running it alone through our model
    alone = torch.cat([ours(d).logits for d in docs])
    assert rel_err(out.logits, alone) <= TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_plain_batch_equals_hf_batch(tmp_path, arch):
    hf, ours = hf_and_ours(tmp_path, arch)
    ids = torch.stack(random_docs([11, 11, 11], seed=3))
    with torch.no_grad():
        ref = hf(ids).logits
    out = ours(ids)
    assert out.logits.shape == ref.shape == (3, 11, hf.config.vocab_size)
    assert rel_err(out.logits, ref) <= TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_hf_checkpoint_round_trip_bit_exact(tmp_path, arch):
    from transformers import AutoModelForCausalLM

    from xt.models import save_pretrained

    hf, ours = hf_and_ours(tmp_path, arch)
    save_pretrained(ours, tmp_path / "ours")
    a, b = load_file(str(tmp_path / "hf" / "model.safetensors")), load_file(str(tmp_path / "ours" / "model.safetensors"))
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    # transformers reads our folder (config.json included) back to the same model
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "ours", attn_implementation="eager").eval()
    ids = random_docs([6])[0][None]
    with torch.no_grad():
        assert torch.equal(again(ids).logits, hf(ids).logits)


@pytest.mark.parametrize("arch", ARCHS)
def test_training_step_gradients_equal_hf(tmp_path, arch):
    hf, ours = hf_and_ours(tmp_path, arch)
    hf.train()
    ours.train()
    docs = random_docs([6, 10, 4], seed=5)
    batch = pack(docs)
    out = ours(**batch)
    out.loss_sum.backward()
    ref_loss = sum(F.cross_entropy(hf(d[None]).logits[0], b["labels"], reduction="sum")
                   for d, b in ((d, pack([d])) for d in docs))
    ref_loss.backward()
    assert rel_err(out.loss_sum, ref_loss) <= TOL
    hf_to_xt, _ = converter(arch)
    grads = {k: p.grad for k, p in hf.named_parameters() if p.grad is not None}
    ref = hf_to_xt(grads, ours.config)
    got = {k: p.grad for k, p in ours.named_parameters()}
    checked = 0
    for k, g in got.items():
        assert k in ref, k
        if float(ref[k].norm()) == 0.0:
            assert g is None or torch.count_nonzero(g) == 0, k  # e.g. experts that got no token
        else:
            assert rel_err(g, ref[k]) <= TOL, (k, rel_err(g, ref[k]))
        checked += 1
    assert checked == len(got) > 10


@pytest.mark.parametrize("arch", ["gpt_oss", "deepseek_v3"])
def test_bf16_autocast_forward_backward_close_to_fp32_hf(tmp_path, arch):
    """What `xt train` runs with train.dtype = "bf16" (fp32 weights, bf16 autocast): logits within the
    bf16 tolerance (docs/architecture.md, Numerics) and finite gradients."""
    hf, ours = hf_and_ours(tmp_path, arch)
    batch = pack(random_docs([9, 12], seed=8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ours(**batch, return_logits=True)
    with torch.no_grad():
        ref = torch.cat([hf(d[None]).logits[0] for d in random_docs([9, 12], seed=8)])
    assert rel_err(out.logits.float(), ref) <= 1e-2
    out.loss_sum.backward()
    assert all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in ours.parameters())


@pytest.fixture(scope="module")
def _oss_pair(tmp_path_factory):
    return hf_and_ours(tmp_path_factory.mktemp("oss"), "gpt_oss")


def test_any_packing_layout_equals_documents_alone(_oss_pair):
    """Hypothesis: random document lengths (1..12 tokens, 1..6 documents, so windows, single-token
    documents and both core paths occur); packed logits equal each document run alone in HF."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    hf, ours = _oss_pair

    @settings(max_examples=12, deadline=None, derandomize=True)
    @given(st.lists(st.integers(1, 12), min_size=1, max_size=6), st.integers(0, 10_000))
    def check(lengths, seed):
        docs = random_docs(lengths, seed=seed)
        with torch.no_grad():
            out = ours(**pack(docs), return_logits=True).logits
            ref = torch.cat([hf(d[None]).logits[0] for d in docs])
        assert rel_err(out, ref) <= TOL

    check()
