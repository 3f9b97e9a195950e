"""DeepSeek-V3's MTP depths survive save -> load: the exported ``config.json`` says
``num_nextn_predict_layers = mtp_layers`` and a folder's config reads it back as ``mtp_layers`` when the
weights are there (`xt.models.deepseek_v3.mtp_depth`). Checked bit for bit, MTP tensors included, through
``from_pretrained``, ``model.init_from`` (meta build + this process's rows read) and XT weights (DCP);
transformers still loads the exported folder with XT's logits; a transformers-saved folder (its default
``num_nextn_predict_layers = 1``, no MTP weights) still loads without MTP."""
from __future__ import annotations

import json

import pytest
import torch

from xt.core.errors import CheckpointError
from xt.models import from_pretrained, save_pretrained, save_xt_weights, section_config
from xt.models.deepseek_v3 import DeepseekV3Config, DeepseekV3ForCausalLM
from xt.models.section import ModelSection, run_model_source
from xt.models.weights import load_weights
from zoo_helpers import VOCAB, hf_model


def _equal(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    hf = hf_model("deepseek_v3")
    cfg = DeepseekV3Config.from_hf(hf.config.to_dict(), mtp_layers=2)
    torch.manual_seed(3)
    model = DeepseekV3ForCausalLM(cfg, attn_backend="sdpa").eval()
    folder = tmp_path_factory.mktemp("mtp") / "hf"
    save_pretrained(model, folder, max_shard_size="100KB")
    return model, folder, hf


def test_mtp_round_trips_bit_exact(exported, tmp_path):
    from xt.parallel import materialize_

    model, folder, _ = exported
    ref = model.state_dict()
    assert sum(k.startswith("mtp.1.") for k in ref) > 10
    written = json.loads((folder / "config.json").read_text())
    assert written["num_nextn_predict_layers"] == 2 and "mtp_layers" not in written
    assert len(list(folder.glob("model-*.safetensors"))) > 1
    back = from_pretrained(folder)
    assert back.config.mtp_layers == 2
    _equal(back.state_dict(), ref)
    section = ModelSection(init_from=str(folder), attn_backend="sdpa")
    assert section_config(section).mtp_layers == 2  # what layout checks and xt plan see
    meta, read = run_model_source(section, "cpu")
    materialize_(meta, "cpu", read=read)
    _equal(meta.state_dict(), ref)
    save_xt_weights(back, tmp_path / "xt")
    xt = load_weights(tmp_path / "xt")
    assert xt.config.mtp_layers == 2
    _equal(xt.state_dict(), ref)


def test_transformers_loads_the_mtp_folder(exported):
    from transformers import AutoModelForCausalLM

    model, folder, _ = exported
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)


def test_folders_without_or_with_partial_mtp_weights(exported, tmp_path):
    model, folder, hf = exported
    hf.save_pretrained(tmp_path / "plain")  # transformers: num_nextn_predict_layers 1 by default, no MTP weights
    assert json.loads((tmp_path / "plain" / "config.json").read_text()).get("num_nextn_predict_layers", 1) >= 1
    assert from_pretrained(tmp_path / "plain").config.mtp_layers == 0
    d = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**d, "num_nextn_predict_layers": 3}))
    try:
        with pytest.raises(CheckpointError, match=r"num_nextn_predict_layers = 3 .*depths \[0, 1\] only"):
            from_pretrained(folder)
        (folder / "config.json").write_text(json.dumps({**d, "mtp_layers": 1}))  # an explicit XT option wins
        one = from_pretrained(folder)
        assert one.config.mtp_layers == 1
        _equal(one.state_dict(), {k: v for k, v in model.state_dict().items() if not k.startswith("mtp.1.")})
    finally:
        (folder / "config.json").write_text(json.dumps(d))
