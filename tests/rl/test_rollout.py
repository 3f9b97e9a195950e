"""The XT rollout engine (`xt.rl.rollout`) against the trainer:

- on a tiny dense XT Qwen3 (fp32) the rollout's log-probs of the sampled tokens equal the trainer's
  `forward_log_probs` on the same ids within 1e-5, at temperature 1 and 0.7;
- with top-p < 1 the rollout's log-probs are of the renormalised nucleus, the trainer's of the
  unfiltered distribution: the gap is exactly ``-log(nucleus mass)`` (computed here by hand from the
  full logits) and is reported as the measured mismatch;
- chat prompts: the rollout's prompt ids (`xt.data.chat.encode_chat_prompt`) followed by the
  response are exactly the ids `xt.data` trains on for that conversation, with one BOS;
- the result survives msgpack (the protocol's wire format), routed experts included.
"""
from __future__ import annotations

import pytest
import torch

from xt.core.engine import Engine
from xt.rl.batch import pack_samples
from xt.rl.losses import forward_log_probs
from xt.rl.rollout import RolloutRequest, RolloutResult, SamplingParams, XTRolloutEngine, decode, encode

from rl_helpers import VOCAB, tiny_qwen3

TOL = 1e-5


def _rollout(model, temperature, top_p, n=3, seed=5, new=6, record=False):
    prompts = [[1, 5, 9], [7], [3, 3, 8, 2, 11]]
    eng = XTRolloutEngine(model, weight_version=4)
    req = RolloutRequest(prompts=prompts, n=n, seed=seed, record_experts=record,
                         sampling=SamplingParams(max_new_tokens=new, temperature=temperature, top_p=top_p,
                                                 stop_token_ids=[0]))
    return eng.generate(req)


def _trainer_log_probs(model, res, temperature):
    s = res.samples
    mb = pack_samples([x.prompt_ids for x in s], [x.response_ids for x in s])
    lp = forward_log_probs(Engine(model, torch.optim.SGD(model.parameters(), lr=0.0)), [mb],
                           temperature=temperature)[0]
    out, at = [], 0
    for x in s:
        n = len(x.prompt_ids) + len(x.response_ids)
        out.append(lp[at + len(x.prompt_ids) - 1: at + n - 1])
        at += n
    return out


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_dense_rollout_log_probs_equal_the_trainers(temperature):
    model = tiny_qwen3(dtype=torch.float32)
    res = _rollout(model, temperature, 1.0)
    assert len(res.samples) == 9 and res.weight_version == 4 and all(x.weight_version == 4 for x in res.samples)
    assert [x.prompt_index for x in res.samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for x in res.samples:
        assert x.finish_reason == ("stop" if x.response_ids[-1] == 0 else "length")
        assert x.finish_reason == "stop" or len(x.response_ids) == 6
        assert x.routed_experts is None
    trainer = _trainer_log_probs(model, res, temperature)
    worst = max(float((torch.tensor(x.log_probs) - t).abs().max()) for x, t in zip(res.samples, trainer))
    assert worst <= TOL
    assert len({tuple(x.response_ids) for x in res.samples}) > 3  # really sampled
    again = _rollout(model, temperature, 1.0)
    assert [x.response_ids for x in again.samples] == [x.response_ids for x in res.samples]  # seeded


def test_top_p_log_probs_are_of_the_nucleus_and_the_gap_is_measured():
    model = tiny_qwen3(dtype=torch.float32)
    temperature, top_p = 0.8, 0.7
    res = _rollout(model, temperature, top_p)
    trainer = _trainer_log_probs(model, res, temperature)
    gaps = []
    for x, t in zip(res.samples, trainer):
        ids = torch.tensor(x.prompt_ids + x.response_ids)
        with torch.no_grad():
            logits = model(input_ids=ids, position_ids=torch.arange(len(ids))).logits.double() / temperature
        p = torch.softmax(logits, -1)[len(x.prompt_ids) - 1:len(ids) - 1]
        sp = p.sort(-1, descending=True).values
        mass = (sp * ((sp.cumsum(-1) - sp) < top_p)).sum(-1)  # the nucleus' probability mass
        gap = torch.tensor(x.log_probs, dtype=torch.float64) - t.double()
        assert torch.allclose(gap, -mass.log(), atol=TOL, rtol=0)
        gaps.append(gap)
    gaps = torch.cat(gaps)
    print(f"\ntop_p={top_p}: rollout - trainer log-prob per token: mean {gaps.mean():.4f}, max {gaps.max():.4f}")
    assert float(gaps.min()) >= -TOL and float(gaps.max()) > 0.05


def test_result_round_trips_through_msgpack_with_routed_experts():
    model = tiny_qwen3(dtype=torch.float32, moe=True)
    res = _rollout(model, 1.0, 1.0, n=2, new=4, record=True)
    back = decode(encode(res), RolloutResult)
    assert back == res
    for x in back.samples:
        r = x.routed_experts.to_tensor()
        assert r.shape == (1, len(x.prompt_ids) + len(x.response_ids), 2) and r.dtype == torch.int64
        assert 0 <= int(r.min()) and int(r.max()) < 4


# The pinned Llama-3 tokenizer's own template always appends the assistant header (a base-model
# template), so the test gives it the Llama-3-Instruct layout: BOS written by the template, turns
# closed by <|eot_id|>.
LLAMA3_CHAT = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
               "{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
               "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


@pytest.mark.parametrize("name", ["llama3", "qwen3"])
def test_chat_prompt_ids_equal_the_training_ids(name):
    import copy

    from xt.data.chat import encode_chat_prompt, encode_chats
    from xt.data.tokenizer import load_tokenizer

    tok = load_tokenizer(name)
    if name == "llama3":
        tok = copy.deepcopy(tok)
        tok.chat_template, tok.eos_token = LLAMA3_CHAT, "<|eot_id|>"
    msgs = [{"role": "user", "content": "What is 3 + 4? Answer with a number."}]
    answer = {"role": "assistant", "content": "7"}
    prompt = encode_chat_prompt(tok, msgs)
    train_ids, mask = encode_chats(tok, [msgs + [answer]], ["test"])[0]
    assert train_ids[:len(prompt)] == prompt and len(train_ids) > len(prompt)
    # what a rollout samples: the assistant turn through its end-of-turn token (the stop token)
    n_resp = int(mask.sum())
    response = train_ids[len(prompt):len(prompt) + n_resp]
    assert bool(mask[len(prompt):len(prompt) + n_resp].all()) and not bool(mask[:len(prompt)].any())
    assert response[-1] == tok.convert_tokens_to_ids(tok.eos_token)
    batch = pack_samples([prompt], [response])
    assert batch["input_ids"].tolist() == train_ids[:len(prompt) + n_resp]
    if name == "llama3":
        assert prompt.count(tok.bos_token_id) == 1 and prompt[0] == tok.bos_token_id
        assert train_ids.count(tok.bos_token_id) == 1


@pytest.mark.parametrize("cuda_graph", [True, False])
def test_rollout_cuda_graph_setting_reaches_the_generation(monkeypatch, cuda_graph):
    """``rollout.cuda_graph`` (`XTRolloutEngine(cuda_graph=)`) is what the engine's generation gets."""
    import xt.rl.rollout.xt_engine as xe

    seen = []
    real = xe.generate_detailed
    monkeypatch.setattr(xe, "generate_detailed", lambda *a, **k: seen.append(k["cuda_graph"]) or real(*a, **k))
    eng = XTRolloutEngine(tiny_qwen3(), cuda_graph=cuda_graph)
    eng.generate(RolloutRequest(prompts=[[1, 5, 9]], n=2, seed=0, sampling=SamplingParams(max_new_tokens=3)))
    assert seen == [cuda_graph]
