"""The fast decode path of `generate_detailed` (``decode_path="fast"``: per-sequence KV caches, tokens
kept on the device, `xt.models.common.fast_decode`) against the reference loop
(``decode_path="reference"``: one document-masked cache of all sequences) on tiny Qwen3 dense and MoE,
GPT-OSS (sinks, sliding window 4) and DeepSeek-V3 (MLA, grouped routing) models, prompts of
different lengths, early stops, greedy and sampled:

- the same tokens, finish reasons and routed experts; log-probs within 1e-6 with float64 weights
  (the two paths compute the same function; the log-probs are float32 outputs, 0 difference
  measured) and within the fp32 floor with float32 weights (1.7e-6 measured; each path is ~2-6e-6
  from the float64 values at |log p| ~ 2, as the attention reductions round differently, so 1e-6 is
  not reachable in fp32; 1e-5 is the bound the rollout tests use for any two fp32 paths);
- sampled log-probs equal the processed (temperature, top-p) log-probs of a full forward;
- a batch whose sequences all stop early stops within `FINISH_CHECK_EVERY` steps, trimmed at each
  sequence's first stop token;
- `sequence_attention` (GQA folding, sinks, window) equals the masked `core_attention` in float64;
- the decode steps read nothing back on the host: 32 more steps add no `.tolist()` / `.cpu()` /
  `int()` / `bool()` of a tensor in the loop's modules (the routing recorder included), only the
  finished-flag read every `FINISH_CHECK_EVERY` steps when there are stop tokens (the reference loop
  makes ~17 such reads per step).
"""
from __future__ import annotations

import pytest
import torch

from xt.models import build_model
from xt.models.common.fast_decode import FINISH_CHECK_EVERY, FinishedPoll
from xt.models.common.generate import generate_detailed
from xt.models.common.sampling import processed_log_probs, sample_next
from xt.models.common.sequence_cache import SequenceCacheState, sequence_attention
from xt.models.common.sinks_attention import core_attention, document_mask
from zoo_helpers import VOCAB, hf_and_ours, random_docs

QWEN3 = dict(architectures=["Qwen3ForCausalLM"], vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8, initializer_range=0.3)
QWEN3_MOE = dict(QWEN3, architectures=["Qwen3MoeForCausalLM"], num_experts=8, num_experts_per_tok=2,
                 moe_intermediate_size=16, norm_topk_prob=True)
ARCHS = ("qwen3", "qwen3_moe", "gpt_oss", "deepseek_v3")
LENGTHS = [3, 9, 1, 6, 13]
FP32_TOL = 1e-5


def _model(tmp_path, arch):
    if arch in ("qwen3", "qwen3_moe"):
        torch.manual_seed(0)
        return build_model(dict(QWEN3 if arch == "qwen3" else QWEN3_MOE), attn_backend="sdpa").eval()
    model = hf_and_ours(tmp_path, arch)[1]
    with torch.no_grad():  # less uniform next-token distributions: the greedy tokens differ between prompts
        for name, p in model.named_parameters():
            if "embed" in name or "lm_head" in name:
                p.mul_(8)
    return model


def _both(model, prompts, new, temperature, eos, record=True, top_p=1.0):
    out = {}
    for path in ("reference", "fast"):
        out[path] = generate_detailed(model, prompts, new, temperature, top_p, eos,
                                      torch.Generator().manual_seed(5), record_experts=record, decode_path=path)
    return out["reference"], out["fast"]


def _stop_tokens(tokens: list[list[int]]) -> list[int]:
    """Stop ids that end sequence 0 by its 3rd token (and, where that leaves one sequence without a
    stop, another sequence by its 6th)."""
    stops = {tokens[0][2]}
    for t in tokens[3][:6]:
        if any(not (stops | {t}) & set(o) for o in tokens):
            stops.add(t)
            break
    return sorted(stops)


def _max_diff(a, b) -> float:
    return max((abs(x - y) for la, lb in zip(a, b) for x, y in zip(la, lb)), default=0.0)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("arch", ARCHS)
def test_fast_decode_equals_the_reference_loop(tmp_path, arch, temperature):
    model = _model(tmp_path, arch)
    prompts = [p.tolist() for p in random_docs(LENGTHS, seed=21)]
    free, _ = _both(model, prompts, 12, temperature, None, record=False)
    eos = _stop_tokens(free.tokens)
    for dtype, tol in ((torch.float32, FP32_TOL), (torch.float64, 1e-6)):
        m = model.to(dtype)
        ref, fast = _both(m, prompts, 12, temperature, eos)
        assert fast.tokens == ref.tokens and fast.finish_reasons == ref.finish_reasons
        assert ref.finish_reasons[0] == "stop" and "length" in ref.finish_reasons
        assert len(set(map(len, ref.tokens))) > 1
        assert [len(x) for x in fast.log_probs] == [len(t) for t in fast.tokens]
        diff = _max_diff(fast.log_probs, ref.log_probs)
        print(f"{arch} T={temperature} {dtype}: max |fast - reference| log-prob {diff:.2e}")
        assert diff <= tol
        if ref.routed_experts is None:
            assert fast.routed_experts is None and arch == "qwen3"
        else:
            assert len(fast.routed_experts) == len(prompts)
            for p, t, a, b in zip(prompts, fast.tokens, ref.routed_experts, fast.routed_experts):
                assert b.shape == a.shape and b.shape[1] == len(p) + len(t) and b.device.type == "cpu"
                assert torch.equal(a, b)
    model.float()


def test_all_stopped_batch_ends_within_the_check_interval(tmp_path):
    model = _model(tmp_path, "qwen3_moe")
    prompts = [p.tolist() for p in random_docs(LENGTHS, seed=22)]
    free, _ = _both(model, prompts, 30, 0.0, None, record=False)
    eos = sorted({t[1] for t in free.tokens})  # every sequence stops by its 2nd token
    calls = []
    hook = model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        ref, fast = _both(model, prompts, 30, 0.0, eos, record=False)
    finally:
        hook.remove()
    assert fast.tokens == ref.tokens and all(r == "stop" for r in fast.finish_reasons)
    assert all(len(t) <= 2 and t[-1] in eos for t in fast.tokens)
    fast_calls = len(calls) - max(len(t) for t in ref.tokens)  # the reference stopped at the longest
    assert fast_calls == FINISH_CHECK_EVERY  # checked at step 8, not 30


def test_no_new_tokens_routes_the_prompts(tmp_path):
    model = _model(tmp_path, "deepseek_v3")
    prompts = [p.tolist() for p in random_docs([4, 7], seed=23)]
    ref, fast = _both(model, prompts, 0, 0.0, None)
    assert fast.tokens == [[], []] and fast.finish_reasons == ["length", "length"]
    assert [r.shape[1] for r in fast.routed_experts] == [4, 7]
    assert all(torch.equal(a, b) for a, b in zip(ref.routed_experts, fast.routed_experts))


@pytest.mark.parametrize("arch", ["gpt_oss", "qwen3_moe"])
def test_sampled_log_probs_equal_a_full_forwards_processed_log_probs(tmp_path, arch):
    model = _model(tmp_path, arch)
    prompts = [p.tolist() for p in random_docs(LENGTHS, seed=24)]
    temperature, top_p = 0.8, 0.9
    g = generate_detailed(model, prompts, 10, temperature, top_p, generator=torch.Generator().manual_seed(2))
    worst = 0.0
    for p, t, lp in zip(prompts, g.tokens, g.log_probs):
        ids = torch.tensor(p + t)
        with torch.no_grad():
            logits = model(input_ids=ids, position_ids=torch.arange(len(ids))).logits
        want = processed_log_probs(logits[len(p) - 1:-1], temperature, top_p).gather(1, torch.tensor(t)[:, None])[:, 0]
        assert torch.isfinite(want).all()  # every sampled token lies in its nucleus
        worst = max(worst, float((torch.tensor(lp) - want).abs().max()))
    assert worst <= FP32_TOL
    assert len({tuple(t) for t in g.tokens}) == len(prompts)


@pytest.mark.parametrize("S", [1, 4])
@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("with_sinks", [False, True])
def test_sequence_attention_equals_the_masked_core(S, window, with_sinks):
    g = torch.Generator().manual_seed(0)
    B, H, G, L, Dq, Dv = 3, 6, 2, 9, 5, 7
    q = torch.randn(B, S, H, Dq, generator=g, dtype=torch.float64)
    k = torch.randn(B, G, L, Dq, generator=g, dtype=torch.float64)
    v = torch.randn(B, G, L, Dv, generator=g, dtype=torch.float64)
    sinks = torch.randn(H, generator=g, dtype=torch.float64) if with_sinks else None
    lengths = torch.tensor([0, 2, L - S])  # cached before the new tokens
    q_pos = lengths[:, None] + torch.arange(S)
    zeros = lambda n: torch.zeros(n, dtype=torch.int64)  # noqa: E731
    mask = torch.stack([document_mask(zeros(S), q_pos[b], zeros(L), torch.arange(L), window) for b in range(B)])
    got = sequence_attention(q, k, v, mask, 0.4, sinks)
    want = core_attention(q, k.transpose(1, 2), v.transpose(1, 2), mask, 0.4, sinks)
    assert got.shape == (B, S, H, Dv)
    assert torch.allclose(got, want, atol=1e-12, rtol=0)


def test_bad_arguments_raise():
    state = SequenceCacheState(2, 4, torch.device("cpu"))
    state.begin_prefill([3, 1])
    state.end_step()
    state.begin_decode()
    state.end_step()
    with pytest.raises(ValueError, match="capacity 4 exceeded"):
        state.begin_decode()
    with pytest.raises(ValueError, match="B=2"):
        state.begin_prefill([1])
    with pytest.raises(ValueError, match="every >= 1"):
        FinishedPoll(torch.zeros(2, dtype=torch.bool), 0)
    torch.manual_seed(0)
    model = build_model(dict(QWEN3))
    with pytest.raises(ValueError, match="decode_path"):
        generate_detailed(model, [[1, 2]], 2, decode_path="paged")


_HOST_READS = ("__bool__", "__int__", "__index__", "__float__", "item", "tolist", "cpu", "numpy")
_LOOP_FILES = ("fast_decode.py", "sequence_cache.py", "sampling.py", "routing_replay.py")


def _count_loop_host_reads(monkeypatch) -> dict:
    """Count, by method, the reads of a tensor's value on the host made from the decode loop's own
    modules (the model's code, e.g. its CPU-only input checks, is not counted)."""
    import sys

    counts: dict[str, int] = {}
    for name in _HOST_READS:
        orig = getattr(torch.Tensor, name)

        def wrapped(self, *a, _orig=orig, _name=name, **k):
            if sys._getframe(1).f_code.co_filename.endswith(_LOOP_FILES):
                counts[_name] = counts.get(_name, 0) + 1
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return counts


@pytest.mark.parametrize("eos", [None, [VOCAB + 1]])  # no stop token; one that is never emitted
def test_decode_steps_read_nothing_on_the_host(monkeypatch, eos):
    torch.manual_seed(0)
    model = build_model(dict(QWEN3_MOE)).eval()
    prompts = [p.tolist() for p in random_docs(LENGTHS, seed=25)]
    reads = {}
    for n in (16, 48):
        with monkeypatch.context() as m:
            counts = _count_loop_host_reads(m)
            generate_detailed(model, prompts, n, 1.0, generator=torch.Generator().manual_seed(0), eos_token_id=eos,
                              record_experts=True)
        reads[n] = counts
    extra = {k: reads[48].get(k, 0) - reads[16].get(k, 0) for k in _HOST_READS}
    # 32 more decode steps: no read per step; with stop tokens one finished-flag read per 8 steps
    assert extra == {k: (32 // FINISH_CHECK_EVERY if eos and k == "__bool__" else 0) for k in _HOST_READS}
    assert sum(reads[16].values()) < 30  # the set-up and the final copies



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("top_p", [1.0, 0.7])
def test_sampling_draws_what_multinomial_draws(dtype, top_p):
    """`sample_next`'s exponential race picks torch.multinomial's tokens from the same generator state
    and leaves the generator where multinomial does."""
    logits = torch.randn(64, 500, generator=torch.Generator().manual_seed(1), dtype=dtype) * 3
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    got = sample_next(logits, 0.8, top_p, g1)
    probs = torch.softmax(logits.float() / 0.8, dim=-1)
    if top_p < 1:
        sp, idx = probs.sort(dim=-1, descending=True)
        probs = torch.zeros_like(probs).scatter(-1, idx, sp.masked_fill((sp.cumsum(-1) - sp) >= top_p, 0.0))
    want = torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, generator=g2).squeeze(-1)
    assert torch.equal(got, want)
    assert torch.equal(g1.get_state(), g2.get_state())


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_static_decode_steps_equal_the_reference_loop(tmp_path, monkeypatch, temperature):
    """The steps a CUDA graph records (all cache slots under a mask, device counters, fixed buffers),
    run eagerly on the CPU: the reference loop's tokens, finish reasons and log-probs (float64, 1e-6)."""
    import functools

    from xt.models.common import fast_decode
    from xt.models.common.decode_graph import WARMUP_STEPS, DecodeGraph

    model = _model(tmp_path, "qwen3").to(torch.float64)
    prompts = [p.tolist() for p in random_docs(LENGTHS, seed=27)]
    free, _ = _both(model, prompts, 12, temperature, None, record=False)
    eos = _stop_tokens(free.tokens)
    monkeypatch.setattr(fast_decode, "graph_blocker", lambda *a: None)
    made = []
    monkeypatch.setattr(fast_decode, "DecodeGraph",
                        lambda *a, **k: made.append(functools.partial(DecodeGraph, capture=False)(*a, **k)) or made[-1])
    ref, static = _both(model, prompts, 12, temperature, eos)
    assert len(made) == 1 and made[0].ready  # the static steps ran
    assert static.tokens == ref.tokens and static.finish_reasons == ref.finish_reasons
    assert ref.finish_reasons[0] == "stop" and "length" in ref.finish_reasons
    assert max(map(len, ref.tokens)) > 1 + WARMUP_STEPS  # steps after the warm-up were replays
    assert _max_diff(static.log_probs, ref.log_probs) <= 1e-6
    model.float()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cuda_graph_decode_equals_the_reference_loop(tmp_path, temperature):
    """On the GPU (float64 weights, a CUDA generator): the decode steps replayed from a CUDA graph
    give the reference loop's tokens and finish reasons, log-probs within 1e-6; the model's Python
    forward ran only for the prefill, the warm-up and the capture."""
    from xt.models.common.decode_graph import WARMUP_STEPS

    model = _model(tmp_path, "qwen3").to("cuda", torch.float64)
    prompts = [p.tolist() for p in random_docs(LENGTHS, seed=26)]
    free = generate_detailed(model, prompts, 12, temperature, 1.0, None, torch.Generator(device="cuda").manual_seed(5),
                             decode_path="reference")
    eos = _stop_tokens(free.tokens)
    out = {}
    for path in ("reference", "fast"):
        calls = []
        hook = model.register_forward_pre_hook(lambda m, a: calls.append(1))
        try:
            out[path] = generate_detailed(model, prompts, 12, temperature, 1.0, eos,
                                          torch.Generator(device="cuda").manual_seed(5), decode_path=path)
        finally:
            hook.remove()
        out[path + "_calls"] = len(calls)
    ref, fast = out["reference"], out["fast"]
    assert fast.tokens == ref.tokens and fast.finish_reasons == ref.finish_reasons
    assert _max_diff(fast.log_probs, ref.log_probs) <= 1e-6
    assert out["fast_calls"] == 2 + WARMUP_STEPS < out["reference_calls"]
    model.float()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, FP32_TOL), (torch.float64, 1e-6)])
def test_moe_fast_decode_on_cuda_equals_the_reference_loop(tmp_path, arch, dtype, tol):
    """An MoE model on the GPU decodes eagerly (no graph): the reference loop's tokens and routed
    experts, log-probs within the bound of the dtype (float64 experts take the per-expert loop)."""
    model = _model(tmp_path, arch).to("cuda", dtype)
    prompts = [p.tolist() for p in random_docs(LENGTHS, seed=26)]
    out = {path: generate_detailed(model, prompts, 12, 0.0, 1.0, None, None, record_experts=True, decode_path=path)
           for path in ("reference", "fast")}
    ref, fast = out["reference"], out["fast"]
    assert fast.tokens == ref.tokens and fast.finish_reasons == ref.finish_reasons
    assert _max_diff(fast.log_probs, ref.log_probs) <= tol
    assert all(torch.equal(a, b) for a, b in zip(ref.routed_experts, fast.routed_experts))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_step_that_cannot_be_captured_decodes_eagerly(tmp_path):
    """A model whose forward reads the device on the host (here a hook's ``.item()``) cannot be
    recorded: the capture warns and the call decodes eagerly, with the reference loop's tokens."""
    model = _model(tmp_path, "qwen3").to("cuda", torch.float64)
    hook = model.register_forward_pre_hook(lambda m, a, kw: float(kw["input_ids"].sum().item()) and None,
                                           with_kwargs=True)
    prompts = [p.tolist() for p in random_docs(LENGTHS, seed=28)]
    try:
        ref = generate_detailed(model, prompts, 12, 0.0, decode_path="reference")
        with pytest.warns(UserWarning, match="CUDA-graph capture failed"):
            fast = generate_detailed(model, prompts, 12, 0.0, decode_path="fast")
    finally:
        hook.remove()
    assert fast.tokens == ref.tokens
    assert _max_diff(fast.log_probs, ref.log_probs) <= 1e-6
    model.float()
