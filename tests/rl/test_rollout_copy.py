"""The parts of colocated multi-rank rollout that run without Ray (`xt.rl.cluster.rollout_copy`,
`xt.rl.cluster.rollout_proxy.split_request` / `merge_samples`), on the tiny Qwen3-MoE config of
test_rl_command.py (tied embeddings):

- `build_rollout_copy` gives a plain frozen model of the section and leaves the global RNG as it was;
- `refresh_copy` from another model's state makes the copy equal it bit for bit (tied weights too),
  counts the bytes of every tensor streamed, and names a missing or an unknown tensor;
- a request split over W workers gives contiguous shares whose prompts concatenate to the
  request's, seeds ``seed * 1009 + k``, and the merged samples point at the whole request's prompts.

The whole colocated run against the disaggregated one is in test_rl_ray.py.
"""
from __future__ import annotations

import msgspec
import pytest
import torch

from test_rl_command import _config
from xt.cli.rl_config import load_rl_config
from xt.models import build_model
from xt.rl.cluster.rollout_copy import build_rollout_copy, refresh_copy
from xt.rl.cluster.rollout_proxy import merge_samples, split_request
from xt.rl.rollout import RolloutRequest, SamplingParams
from xt.rl.rollout.protocol import RolloutResult, RolloutSample


@pytest.fixture(scope="module")
def section(tmp_path_factory):
    return load_rl_config(_config(tmp_path_factory.mktemp("copy"), "copy", moe=True)).model


def test_refreshed_copy_equals_the_source_and_leaves_the_rng_alone(section):
    before = torch.get_rng_state()
    copy = build_rollout_copy(section, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), before)
    assert not any(p.requires_grad for p in copy.parameters()) and type(copy).__name__ == "Qwen3ForCausalLM"
    torch.manual_seed(123)
    source = build_model(section.config)
    state = source.state_dict()
    assert any(not torch.equal(copy.state_dict()[k], v) for k, v in state.items())
    n = refresh_copy(copy, state.items())
    assert n == sum(t.numel() * t.element_size() for t in state.values())
    got = copy.state_dict()
    assert got.keys() == state.keys() and all(torch.equal(got[k], v) for k, v in state.items())
    assert copy.lm_head.weight.data_ptr() == copy.model.embed_tokens.weight.data_ptr()  # still tied


def test_refresh_names_missing_and_unknown_tensors(section):
    copy = build_rollout_copy(section, torch.device("cpu"))
    items = list(build_model(section.config).state_dict().items())
    with pytest.raises(KeyError, match="did not arrive"):
        refresh_copy(copy, [(k, v) for k, v in items if k != "model.norm.weight"])
    with pytest.raises(KeyError, match="'extra.weight', which the rollout model lacks"):
        refresh_copy(copy, [*items, ("extra.weight", torch.zeros(2))])


def _request(n_prompts: int) -> RolloutRequest:
    return RolloutRequest(prompts=[[10 + i, 20 + i] for i in range(n_prompts)], n=2, seed=7,
                          sampling=SamplingParams(max_new_tokens=3, temperature=1.0, stop_token_ids=[]))


@pytest.mark.parametrize("n_prompts, workers", [(5, 2), (3, 3), (2, 4), (4, 1)])
def test_split_request_shares_and_merged_prompt_indices(n_prompts, workers):
    req = _request(n_prompts)
    parts, reqs = split_request(req, workers)
    assert len(reqs) == len(parts) == min(n_prompts, workers)
    assert [p for r in reqs for p in r.prompts] == req.prompts
    assert [b - a for a, b in parts] == [len(r.prompts) for r in reqs]
    assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1
    assert [r.seed for r in reqs] == ([req.seed] if workers == 1 else [req.seed * 1009 + k for k in range(len(reqs))])
    assert all(msgspec.structs.replace(r, prompts=req.prompts, seed=req.seed) == req for r in reqs)
    results = [RolloutResult(samples=[RolloutSample(prompt_index=i, prompt_ids=p, response_ids=[p[0]], log_probs=[0.0],
                                                    finish_reason="length", weight_version=0)
                                      for i, p in enumerate(r.prompts)], weight_version=0, seconds=0.0) for r in reqs]
    merged = merge_samples(parts, results)
    assert [s.prompt_index for s in merged] == list(range(n_prompts))
    assert [req.prompts[s.prompt_index][0] for s in merged] == [s.response_ids[0] for s in merged]
