"""The rollout's precision (``rollout.dtype``, `xt.rl.rollout.precision`) on tiny XT Qwen3s (CPU):

- `Engine.compute_context` is the precision of `Engine.forward`: the model called inside it gives
  the engine's bf16 outputs bit for bit; with an fp32 engine it changes nothing;
- with ``train.dtype = "bf16"`` forced, the rollout in the training precision ("train") gives
  per-token log-probs within ``BF16_TOL`` of the trainer's (`forward_log_probs`, a packed bf16
  forward through `Engine.forward`); they are not equal. The whole difference is the attention:
  the KV-cache decode attends over the cache with a mask (the fast decode path: each sequence's
  own cached keys with a key-length mask; the reference loop: the keys of all sequences) where the
  packed forward runs one causal SDPA per document, and bf16 SDPA rounds its softmax
  probabilities per block of keys, so the two round differently; each layer's bf16 output then
  differs by an ulp here and there (|logit| < 4 here: ulp 2^-6 = 0.016; ``BF16_TOL`` about two).
  On this model that leaves the bf16 rollout only ~13% closer to the trainer than the fp32
  rollout (both measured and printed). With SDPA computing in float32 on its bf16 inputs (patched
  in for both paths), the bf16 rollout equals the trainer within 1e-6 while the fp32 rollout
  stays ~1e-2 away: everything else (compute copies, casts, the head) is the trainer's exactly;
- a disaggregated rollout's own compute copies (`copy_precision`) are re-cast after a weight
  load: ``copy_`` into the masters (the bucket hand-over by HF name) and ``load_state_dict`` both
  bump the masters' version counters, so the next generation sees the new weights, equal to a
  rollout built on them from scratch.

The Ray disaggregated actor against the colocated rollout in bf16 is in test_rl_ray.py.
"""
from __future__ import annotations

import torch

from xt.core.engine import Engine
from xt.core.engine.precision import resolve_precision
from xt.rl.batch import pack_samples
from xt.rl.cluster.weights import copy_bucket, hf_targets
from xt.rl.losses import forward_log_probs
from xt.rl.rollout import RolloutRequest, SamplingParams, XTRolloutEngine
from xt.rl.rollout.precision import FP32_ROLLOUT, copy_precision, policy_precision

BF16_TOL = 0.03  # module docstring
CPU = torch.device("cpu")


def _model(seed: int = 0):
    from xt.models.qwen3.config import Qwen3Config
    from xt.models.qwen3.model import Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, initializer_range=0.1,
                      tie_word_embeddings=True)
    return Qwen3ForCausalLM(cfg).float()


def _engine(model, dtype: str = "bf16") -> Engine:
    return Engine(model, torch.optim.SGD(model.parameters(), lr=0.0), precision=resolve_precision(dtype, CPU))


REQUEST = RolloutRequest(prompts=[[1, 5, 9], [7], [3, 3, 8, 2, 11]], n=4, seed=5,
                         sampling=SamplingParams(max_new_tokens=12, temperature=1.0, top_p=1.0, stop_token_ids=[]))


def _trainer_log_probs(engine: Engine, res) -> torch.Tensor:
    """The trainer's log-probs of every response token of `res`, in sample order, flat."""
    s = res.samples
    lp = forward_log_probs(engine, [pack_samples([x.prompt_ids for x in s], [x.response_ids for x in s])])[0]
    out, at = [], 0
    for x in s:
        n = len(x.prompt_ids) + len(x.response_ids)
        out.append(lp[at + len(x.prompt_ids) - 1: at + n - 1])
        at += n
    return torch.cat(out)


def _flat(res) -> torch.Tensor:
    return torch.tensor([v for x in res.samples for v in x.log_probs])


def test_compute_context_is_the_forward_precision():
    model = _model()
    ids = torch.tensor([1, 5, 9, 7, 3])
    batch = {"input_ids": ids, "position_ids": torch.arange(5)}
    for dtype in ("bf16", "fp32"):
        eng = _engine(model, dtype)
        want = eng.forward([batch])[0].logits
        before = [p for p in model.parameters()]
        with eng.compute_context(), torch.no_grad():
            got = model(**batch).logits
            inside = [p for p in model.parameters()]
        assert got.dtype == want.dtype == (torch.bfloat16 if dtype == "bf16" else torch.float32)
        assert torch.equal(got, want)
        assert all(a is b for a, b in zip(before, model.parameters()))  # the masters are back
        assert (dtype == "fp32") == all(a is b for a, b in zip(before, inside))  # swapped only in bf16


def _rollouts(model):
    """(bf16-trainer engine, |rollout - trainer| per token for the "train" and the "fp32" rollout)."""
    eng = _engine(model, "bf16")
    bf16 = XTRolloutEngine(model, precision=policy_precision(eng, "train")).generate(REQUEST)
    fp32 = XTRolloutEngine(model, precision=policy_precision(eng, "fp32")).generate(REQUEST)
    return eng, fp32, ((_flat(bf16) - _trainer_log_probs(eng, bf16)).abs(),
                       (_flat(fp32) - _trainer_log_probs(eng, fp32)).abs())


def _fp32_sdpa(monkeypatch):
    """SDPA computing in float32 on its (bf16) inputs, output in their dtype: blocking-invariant."""
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def fp32_sdpa(q, k, v, *args, **kwargs):
        with torch.autocast("cpu", enabled=False):
            return sdpa(q.float(), k.float(), v.float(), *args, **kwargs).to(q.dtype)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", fp32_sdpa)


def test_bf16_rollout_log_probs_match_the_bf16_trainer(monkeypatch):
    model = _model()
    eng, fp32, (d16, d32) = _rollouts(model)
    assert policy_precision(eng, "fp32") is FP32_ROLLOUT
    print(f"\nrollout vs bf16 trainer log-probs over {d16.numel()} tokens: bf16 rollout max {d16.max():.2e} "
          f"mean {d16.mean():.2e}; fp32 rollout max {d32.max():.2e} mean {d32.mean():.2e}")
    assert d16.numel() == d32.numel() == 12 * 12
    assert float(d16.max()) <= BF16_TOL and float(d16.mean()) < float(d32.mean())
    # the fp32 rollout is today's: the fp32 weights without autocast, whatever the trainer does
    plain = XTRolloutEngine(model).generate(REQUEST)
    assert [x.response_ids for x in plain.samples] == [x.response_ids for x in fp32.samples]
    assert torch.equal(_flat(plain), _flat(fp32))
    # the difference left is the attention's bf16 rounding (module docstring)
    _fp32_sdpa(monkeypatch)
    _, _, (e16, e32) = _rollouts(model)
    print(f"with float32 SDPA: bf16 rollout max {e16.max():.2e}, fp32 rollout max {e32.max():.2e}")
    assert float(e16.max()) <= 1e-6 and float(e32.max()) > 1e-3 and float(e32.mean()) > 1000 * float(e16.mean())


def test_weight_loads_re_cast_the_rollout_copies():
    trained = _model(seed=1)
    model = _model(seed=0)
    model.requires_grad_(False)
    prec = copy_precision(model, _engine_cfg(), "train", CPU)
    assert prec.weights is not None and "bf16 copies" in prec.summary
    rollout = XTRolloutEngine(model, precision=prec)
    rollout.generate(REQUEST)
    assert not prec.weights._stale()
    seen: set[str] = set()
    copy_bucket(hf_targets(model), hf_targets(trained).items(), seen)  # the bucket hand-over by HF name
    assert prec.weights._stale()  # the views' copy_ bumped the masters' version counters
    got = rollout.generate(REQUEST)
    fresh = XTRolloutEngine(trained, precision=copy_precision(trained, _engine_cfg(), "train", CPU)).generate(REQUEST)
    assert [x.response_ids for x in got.samples] == [x.response_ids for x in fresh.samples]
    assert torch.equal(_flat(got), _flat(fresh))
    for master, copy in prec.weights.pairs:
        assert torch.equal(copy, master.to(torch.bfloat16))
    rollout.load_weights(_model(seed=2).state_dict(), 3)  # load_state_dict: in place too
    assert prec.weights._stale()


def _engine_cfg():
    from xt.core.config import TrainConfig
    return TrainConfig(dtype="bf16")
