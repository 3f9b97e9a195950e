"""Sharded HF load (issue 13, item 2, every family: Qwen3-MoE, Llama, GPT-OSS with fused and MXFP4
experts, DeepSeek-V3 with FP8 block-quantised weights and MTP; issue 15: InternVL with a dense and
a Qwen3-MoE language model, vision tower and projector FSDP-sharded): a model built and laid out on meta
loads its shards from an HF folder (several files + index) with each rank reading only its rows
(safetensors ``get_slice``); the assembled parameters and persistent buffers equal the non-sharded
load (``from_pretrained``, in float32) bit for bit, and each rank reads about 1/world of the bytes."""
from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.dist


def _config(name: str, **over) -> dict:
    return {**tomllib.loads((ROOT / "examples" / name).read_text())["model"]["config"], "vocab_size": 512, **over}


def _internvl(moe: bool, tied: bool) -> dict:
    """The digits example's InternVL (a small vocabulary), with a Qwen3-MoE or a dense Qwen3 LM."""
    cfg = tomllib.loads((ROOT / "examples" / "internvl_tiny_digits.toml").read_text())["model"]["config"]
    text = {**cfg["text_config"], "vocab_size": 512}
    if not moe:
        text = {k: v for k, v in text.items() if k not in ("num_experts", "num_experts_per_tok", "norm_topk_prob",
                                                           "router_aux_loss_coef", "moe_intermediate_size")}
        text["model_type"] = "qwen3"
    return {**cfg, "image_token_id": 500, "tie_word_embeddings": tied, "text_config": text}


CASES = [(2, "qwen3_moe_shakespeare.toml", dict(ep_size=2), None),
         (4, "qwen3_moe_shakespeare.toml", dict(hsdp_replicate=2, ep_size=2), None),
         (2, "llama_tiny.toml", dict(), None),
         (4, "gpt_oss_tiny.toml", dict(ep_size=4, activation_checkpointing=1.0), None),
         (2, "gpt_oss_tiny.toml", dict(ep_size=2), "mxfp4"),
         (4, "deepseek_v3_tiny.toml", dict(ep_size=2), "fp8"),
         (2, "deepseek_v3_tiny.toml", dict(hsdp_replicate=2), None),
         (2, "internvl-moe", dict(ep_size=2), None),         # Intern-S1 shape, untied head
         (2, "internvl-dense", dict(), None)]                # InternVL3.5 shape, tied head


@pytest.mark.parametrize("world,name,layout,quant", CASES,
                         ids=[f"w{w}-{n.split('.')[0]}-{lay}-{q}" for w, n, lay, q in CASES])
def test_each_rank_reads_only_its_rows(pools, tmp_path, world, name, layout, quant):
    from quantized_folders import fp8_folder, mxfp4_folder

    from xt.models import build_model, from_pretrained, save_pretrained
    from xt.models.common.safetensors_io import CheckpointReader
    if name.startswith("internvl"):
        model_cfg = _internvl(moe=name == "internvl-moe", tied=name == "internvl-dense")
    else:
        model_cfg = _config(name, tie_word_embeddings=False) if "qwen3" in name else _config(name)
    torch.manual_seed(4)
    ref = build_model(model_cfg, attn_backend="sdpa")
    for n, b in ref.named_buffers():
        if n.endswith("e_score_correction_bias"):  # a persistent buffer: loaded, not initialised
            b.copy_(torch.randn(b.shape))
    save_pretrained(ref, tmp_path / "hf", max_shard_size=200_000)  # several files + index
    folder = tmp_path / "hf"
    if "mtp_layers" in model_cfg:  # an XT option config.json does not carry: the reference load needs it
        hf_cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**hf_cfg, "mtp_layers": model_cfg["mtp_layers"]}))
    if quant is not None:
        folder = tmp_path / quant
        (fp8_folder if quant == "fp8" else mxfp4_folder)(tmp_path / "hf", folder)
    assert len(list(folder.glob("*.safetensors"))) > 1
    whole = from_pretrained(folder, dtype=torch.float32, attn_backend="sdpa")  # the non-sharded load
    spec = dict(fn="meta_cases:run_sharded_load", model=model_cfg, hf=str(folder),
                layout=dict(layout, param_dtype=None, reduce_dtype=None))
    got = pools(world).run(spec)
    want = dict(whole.named_parameters())
    assert sorted(got["params"]) == sorted(want)
    bad = [n for n, t in want.items() if not torch.equal(got["params"][n], t.detach())]
    assert not bad, bad[:10]
    if quant is None:  # unquantised: the saved model itself
        assert all(torch.equal(t, ref.get_parameter(n)) for n, t in want.items())
    buffers = dict(whole.named_buffers())
    assert all(torch.equal(got["buffers"][n], b) for n, b in buffers.items() if "e_score" in n)
    assert sum("e_score" in n for n in buffers) == (3 if "deepseek" in name else 0)
    reader = CheckpointReader(folder)
    mtp_copies = re.compile(r"^model\.layers\.\d+\.(embed_tokens|shared_head\.head)\.weight$")  # skipped on load
    full = sum(reader.get_rows(k, 0, 0).element_size() * math.prod(reader.shape(k))
               for k in reader.keys() if not mtp_copies.match(k))
    replicas = layout.get("hsdp_replicate", 1)
    for b in got["bytes_read"]:
        assert b <= full * replicas / world * 1.1 + 8192, (b, full / world)
    assert sum(got["bytes_read"]) >= full * replicas  # every row was read by some rank


def test_a_checkpoint_of_another_model_is_refused_before_any_read(tmp_path):
    """The family's from_hf runs on meta tensors of the stored shapes: a checkpoint of another size
    fails at once with the key, shapes and folder named, nothing read."""
    from xt.core.errors import CheckpointError
    from xt.models import build_model, config_from_hf, from_pretrained, save_pretrained
    from xt.models.hf_rows import hf_row_reader
    cfg = _config("deepseek_v3_tiny.toml")
    save_pretrained(build_model(cfg, attn_backend="sdpa"), tmp_path / "hf")
    with pytest.raises(CheckpointError, match=r"kv_a_proj_with_mqa.weight has shape \(80, 128\), the config needs \(48, 128\)") as e:
        hf_row_reader(tmp_path / "hf", config_from_hf({**cfg, "kv_lora_rank": 32}))
    assert str(tmp_path / "hf") in str(e.value)
    with pytest.raises(CheckpointError, match="missing"):  # MTP weights the checkpoint lacks
        hf_row_reader(tmp_path / "hf", config_from_hf({**cfg, "mtp_layers": 2}))
    hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    hf_cfg["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [64, 64]}
    (tmp_path / "hf" / "config.json").write_text(json.dumps(hf_cfg))
    for load in (lambda: hf_row_reader(tmp_path / "hf", config_from_hf(cfg)), lambda: from_pretrained(tmp_path / "hf")):
        with pytest.raises(CheckpointError, match=r"weight_block_size = \[64, 64\]"):
            load()


@pytest.mark.parametrize("world,layout", [(2, dict(ep_size=2)), (4, dict(hsdp_replicate=2, ep_size=2))])
def test_xt_weights_load_into_the_layout(pools, tmp_path, world, layout):
    """``model.init_from`` XT weights (DCP, from ``xt convert``): the meta model is laid out, and
    ``finish_run_model`` loads every rank's shards; the gathered state equals the saved model's
    (DeepSeek-V3 with MTP and its router-bias buffers)."""
    from xt.models import build_model, save_xt_weights
    cfg = _config("deepseek_v3_tiny.toml")
    torch.manual_seed(6)
    ref = build_model(cfg, attn_backend="sdpa")
    for n, b in ref.named_buffers():
        if n.endswith("e_score_correction_bias"):
            b.copy_(torch.randn(b.shape))
    save_xt_weights(ref, tmp_path / "xt")
    hf_cfg = json.loads((tmp_path / "xt" / "config.json").read_text())  # mtp_layers: an XT option config.json lacks
    (tmp_path / "xt" / "config.json").write_text(json.dumps({**hf_cfg, "mtp_layers": cfg["mtp_layers"]}))
    spec = dict(fn="meta_cases:run_xt_weights_load", model=cfg, xt=str(tmp_path / "xt"),
                layout=dict(layout, param_dtype=None, reduce_dtype=None))
    got = pools(world).run(spec)["state"]
    want = ref.state_dict()
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], v) for k, v in want.items())
