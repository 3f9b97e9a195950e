"""The export hook of a laid-out run (`xt.parallel.exporter` with `xt.models.save_pretrained`)
writes the same HF folder as the plain model: FSDP shards and EP slices gathered, tied embeddings
and persistent buffers (DeepSeek-V3's ``e_score_correction_bias``) included.

DeepSeek-V3 with tied embeddings and one MTP depth: its HF layout repeats the LM head in the MTP
layer (``shared_head.head.weight``), so the gathered state must carry ``lm_head.weight`` although
FSDP2 holds the tied parameter once."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from safetensors.torch import load_file

from parallel_cases import export_model

pytest.importorskip("xt.models.registry")
pytestmark = pytest.mark.dist

ROOT = Path(__file__).resolve().parents[2]


def _tensors(folder: Path) -> dict:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("layout", [dict(ep_size=2), dict(sp_size=2, activation_checkpointing=1.0)],
                         ids=["ep2", "sp2-ac"])
def test_export_under_a_layout_equals_the_plain_export(pools, tmp_path, layout):
    from xt.models import save_pretrained
    model = {**tomllib.loads((ROOT / "examples" / "deepseek_v3_tiny.toml").read_text())["model"]["config"],
             "vocab_size": 64, "tie_word_embeddings": True, "mtp_layers": 1}
    spec = dict(fn="parallel_cases:run_export", builder="xt_registry", model=model, seed=3, dir=str(tmp_path / "dist"),
                layout=dict(layout, param_dtype=None, reduce_dtype=None))
    assert pools(2).run(spec)["world_size"] == 2
    save_pretrained(export_model(spec), tmp_path / "plain")
    got, ref = _tensors(tmp_path / "dist"), _tensors(tmp_path / "plain")
    assert sorted(got) == sorted(ref)
    assert any(k.endswith("e_score_correction_bias") and ref[k].abs().sum() > 0 for k in ref)
    assert any(k.endswith("shared_head.head.weight") for k in ref)
    for k, t in ref.items():
        assert got[k].dtype == t.dtype and got[k].equal(t), k
    assert (tmp_path / "dist" / "config.json").read_text() == (tmp_path / "plain" / "config.json").read_text()
