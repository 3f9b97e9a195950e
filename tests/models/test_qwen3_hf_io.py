"""HF safetensors in and out: transformers-saved -> ours, ours -> transformers, sharding, tying."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from qwen3_helpers import VOCAB, hf_and_ours, rel_err
from xt.models import from_pretrained, save_pretrained


def _keys(folder):
    index = folder / "model.safetensors.index.json"
    if index.exists():
        return set(json.loads(index.read_text())["weight_map"])
    with safe_open(folder / "model.safetensors", "pt") as f:
        return set(f.keys())


@pytest.mark.parametrize("moe", [False, True])
@pytest.mark.parametrize("tied", [False, True])
def test_roundtrip_through_transformers(tmp_path, moe, tied):
    from transformers import AutoModelForCausalLM

    hf, ours = hf_and_ours(tmp_path, moe=moe, tied=tied)
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == tied
    save_pretrained(ours, tmp_path / "ours")
    # same key set as transformers writes (per-expert keys; no lm_head when tied)
    assert _keys(tmp_path / "ours") == _keys(tmp_path / "hf")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert type(back) is type(hf)
    ids = torch.randint(0, VOCAB, (2, 13))
    with torch.no_grad():
        ref = hf(ids).logits
        assert rel_err(ours(ids).logits, ref) <= 1e-5
        assert rel_err(back(ids).logits, ref) <= 1e-6
    if tied:
        assert back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()


def test_sharded_save_and_load(tmp_path):
    from transformers import AutoModelForCausalLM

    hf, ours = hf_and_ours(tmp_path, moe=True)
    files = save_pretrained(ours, tmp_path / "sh", max_shard_size="20KB")
    shards = sorted(f for f in files if f.startswith("model-"))
    assert len(shards) > 1 and "model.safetensors.index.json" in files
    index = json.loads((tmp_path / "sh" / "model.safetensors.index.json").read_text())
    sizes = {k: v.numel() * v.element_size() for k, v in hf.state_dict().items()}
    assert index["metadata"]["total_size"] == sum(sizes.values())
    assert set(index["weight_map"].values()) == set(shards)
    assert not [p for p in (tmp_path / "sh").iterdir() if p.name.startswith(".")]  # no temp files left
    ids = torch.randint(0, VOCAB, (1, 10))
    with torch.no_grad():
        ref = hf(ids).logits
        assert rel_err(from_pretrained(tmp_path / "sh")(ids).logits, ref) <= 1e-5
        assert rel_err(AutoModelForCausalLM.from_pretrained(tmp_path / "sh")(ids).logits, ref) <= 1e-6
    # saving again unsharded removes the stale shards and index
    save_pretrained(ours, tmp_path / "sh")
    assert sorted(p.name for p in (tmp_path / "sh").iterdir()) == ["config.json", "generation_config.json",
                                                                   "model.safetensors"]


def test_save_explicit_full_state_dict_and_bf16(tmp_path):
    """save_pretrained(state_dict=...) (what a sharded run passes after gathering) in bf16."""
    from transformers import AutoModelForCausalLM

    hf, ours = hf_and_ours(tmp_path, moe=True)
    full = {k: v.to(torch.bfloat16) for k, v in ours.state_dict().items()}
    save_pretrained(ours, tmp_path / "bf16", state_dict=full)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32)
    for k, v in hf.state_dict().items():
        assert torch.equal(back.state_dict()[k], v.to(torch.bfloat16).float()), k


def test_transformers_sharded_checkpoint_loads(tmp_path):
    hf, _ = hf_and_ours(tmp_path, moe=True, tied=True)
    hf.save_pretrained(tmp_path / "hfsh", max_shard_size="20KB")
    assert (tmp_path / "hfsh" / "model.safetensors.index.json").exists()
    ids = torch.randint(0, VOCAB, (1, 9))
    with torch.no_grad():
        assert rel_err(from_pretrained(tmp_path / "hfsh")(ids).logits, hf(ids).logits) <= 1e-5


def test_load_dtype_and_missing_key_error(tmp_path):
    from safetensors.torch import load_file, save_file

    _, ours = hf_and_ours(tmp_path, moe=True)
    assert from_pretrained(tmp_path / "hf", dtype=torch.bfloat16).model.norm.weight.dtype == torch.bfloat16
    sd = load_file(tmp_path / "hf" / "model.safetensors")
    del sd["model.layers.1.mlp.experts.3.up_proj.weight"]
    save_file(sd, tmp_path / "hf" / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.experts\.3\.up_proj\.weight"):
        from_pretrained(tmp_path / "hf")


def test_bad_config_json_names_file_and_line(tmp_path):
    from xt.models import ConfigError

    (tmp_path / "config.json").write_text('{\n  "architectures": ["Qwen3ForCausalLM"],\n  "vocab_size": 12,,\n}')
    with pytest.raises(ConfigError, match=r"config\.json:3:"):
        from_pretrained(tmp_path)
