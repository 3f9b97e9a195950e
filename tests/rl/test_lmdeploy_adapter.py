"""The LMDeploy rollout adapter's translation (`xt.rl.rollout.lmdeploy_engine`) against a fake
pipeline (LMDeploy is not installed here; the engine itself is not run):

- each flat sample gets its own GenerationConfig: n = 1, the request's budget / temperature /
  top-p, top-k off, one log-prob, a distinct seed per sample, greedy as do_sample = False;
- responses become protocol samples in prompt-major order with the sampled tokens' log-probs; a
  stop token LMDeploy left out is put back from the extra log-prob position;
- refused with a clear error: a prompt LMDeploy tokenized to another length, a stop whose token is
  nowhere, a missing log-prob, an unknown finish reason, a count mismatch;
- load_weights exports the policy to a new folder and restarts the pipeline there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from xt.rl.rollout import RolloutRequest, SamplingParams
from xt.rl.rollout.lmdeploy_engine import SEED_STRIDE, LMDeployRolloutEngine, generation_kwargs, to_rollout_samples


@dataclass
class FakeGenConfig:
    n: int
    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    top_k: int
    random_seed: int
    stop_token_ids: list | None
    logprobs: int
    skip_special_tokens: bool


@dataclass
class FakeResponse:
    token_ids: list
    logprobs: list
    finish_reason: str
    input_token_len: int
    text: str = ""


@dataclass
class FakePipe:
    path: str
    calls: list = field(default_factory=list)
    closed: bool = False

    def __call__(self, texts, gen_config, do_preprocess):
        self.calls.append((texts, gen_config, do_preprocess))
        out = []
        for t, g in zip(texts, gen_config):
            n_prompt = len(t.split())
            tok = 10 + g.random_seed % 7
            if g.random_seed % 2:  # stops: LMDeploy leaves the stop token (2) out of token_ids
                out.append(FakeResponse([tok], [{tok: -0.5}, {2: -0.25, 5: -3.0}], "stop", n_prompt))
            else:
                out.append(FakeResponse([tok, tok + 1], [{tok: -1.0}, {tok + 1: -2.0}], "length", n_prompt))
        return out

    def close(self):
        self.closed = True


def _request(**kw):
    sp = SamplingParams(max_new_tokens=2, temperature=0.7, top_p=0.9, stop_token_ids=[2])
    return RolloutRequest(prompts=[[1, 4, 4], [7, 8]], n=2, sampling=kw.pop("sampling", sp), seed=3, **kw)


def _engine(exported=None):
    pipes = []

    def factory(path, backend_config):
        pipes.append(FakePipe(path))
        return pipes[-1]

    export = (lambda folder: exported.append(folder)) if exported is not None else None
    eng = LMDeployRolloutEngine("/models/policy", lambda ids: " ".join(map(str, ids)), export=export,
                                pipeline_factory=factory, gen_config_cls=FakeGenConfig, backend_config="cfg")
    return eng, pipes


def test_generation_kwargs_per_sample():
    kws = generation_kwargs(_request())
    assert len(kws) == 4 and [k["random_seed"] for k in kws] == [3 * SEED_STRIDE + j for j in range(4)]
    assert all(k["n"] == 1 and k["max_new_tokens"] == 2 and k["temperature"] == 0.7 and k["top_p"] == 0.9
               and k["top_k"] == 0 and k["logprobs"] == 1 and k["do_sample"] and k["stop_token_ids"] == [2]
               for k in kws)
    greedy = generation_kwargs(_request(sampling=SamplingParams(max_new_tokens=1, temperature=0.0)))
    assert not greedy[0]["do_sample"] and greedy[0]["stop_token_ids"] is None


def test_generate_translates_responses_in_order():
    eng, pipes = _engine()
    res = eng.generate(_request(request_id="r1"))
    texts, configs, pre = pipes[0].calls[0]
    assert texts == ["1 4 4", "1 4 4", "7 8", "7 8"] and pre is False and configs[2].random_seed == 3 * SEED_STRIDE + 2
    s = res.samples
    assert [x.prompt_index for x in s] == [0, 0, 1, 1] and res.request_id == "r1"
    seeds = [3 * SEED_STRIDE + j for j in range(4)]
    for x, seed in zip(s, seeds):
        tok = 10 + seed % 7
        if seed % 2:
            assert x.response_ids == [tok, 2] and x.log_probs == [-0.5, -0.25] and x.finish_reason == "stop"
        else:
            assert x.response_ids == [tok, tok + 1] and x.log_probs == [-1.0, -2.0] and x.finish_reason == "length"
    assert {seed % 2 for seed in seeds} == {0, 1} and s[2].prompt_ids == [7, 8] and s[0].routed_experts is None


@pytest.mark.parametrize("bad, match", [
    (lambda rs: rs.__setitem__(0, FakeResponse([11], [{11: -1.0}], "length", 5)), "tokenizer does not round-trip"),
    (lambda rs: rs.__setitem__(0, FakeResponse([11], [{11: -1.0}], "stop", 3)), "stop token is not reported"),
    (lambda rs: rs.__setitem__(0, FakeResponse([11], [{12: -1.0}], "length", 3)), "no log-prob for the sampled"),
    (lambda rs: rs.__setitem__(0, FakeResponse([11], [{11: -1.0}], "abort", 3)), "finish_reason 'abort'"),
    (lambda rs: rs.pop(), "3 responses for 4 samples"),
])
def test_untranslatable_responses_are_refused(bad, match):
    req = _request()
    responses = FakePipe("x")(["1 4 4", "1 4 4", "7 8", "7 8"],
                              [FakeGenConfig(**k) for k in generation_kwargs(req)], False)
    bad(responses)
    with pytest.raises(ValueError, match=match):
        to_rollout_samples(req, responses, 0)


def test_load_weights_exports_and_restarts():
    exported = []
    eng, pipes = _engine(exported)
    eng.load_weights(None, 5)
    assert len(pipes) == 2 and pipes[0].closed and pipes[1].path == str(exported[0])
    assert eng.weight_version == 5 and eng.generate(_request()).weight_version == 5
    assert isinstance(exported[0], Path) and exported[0].exists()
    eng2, _ = _engine()
    with pytest.raises(RuntimeError, match="export"):
        eng2.load_weights(None, 1)
