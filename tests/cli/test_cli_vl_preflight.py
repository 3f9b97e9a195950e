"""`xt train`'s preflight of vision-language runs: ``[data.vision]`` that does not fit the model,
and part names the model lacks, are refused with the key, file and line before anything is built
(`xt.cli.preflight.preflight`, in process)."""
from __future__ import annotations

from pathlib import Path

import pytest

from xt.cli.config import load_xt_config
from xt.cli.preflight import preflight
from xt.core.config import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
VL = str(EXAMPLES / "internvl_tiny_digits.toml")


def test_the_example_passes():
    preflight(load_xt_config(VL), VL)


@pytest.mark.parametrize("override,needles", [
    ("data.vision.image_size=64", ["--set 'data.vision.image_size=64'", "data.vision.image_size", "= 32"]),
    ("data.vision.image_seq_length=4", ["data.vision.image_seq_length", "image_seq_length = 16"]),
    ("data.vision.image_token='<|vision_pad|>'", ["data.vision.image_token", "token 151654", "image_token_id is 151655"]),
    ("model.freeze=['vision']", ["model.freeze", "'vision'", "vision_tower"]),
    ("optim.part_lr={vit = 1e-3}", ["optim.part_lr", "'vit'", "projector"]),
])
def test_mismatches_are_refused_where_written(override, needles):
    with pytest.raises(ConfigError) as e:
        preflight(load_xt_config(VL, [override]), VL, [override])
    for n in needles:
        assert n in str(e.value), (n, str(e.value))


def test_a_mismatch_in_the_file_names_its_line(tmp_path):
    text = Path(VL).read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("image_size = 32                     # = vision_config.image_size", "image_size = 64"))
    line = next(i for i, t in enumerate(bad.read_text().splitlines(), 1) if t == "image_size = 64")
    with pytest.raises(ConfigError, match=rf"bad\.toml:{line}: `data\.vision\.image_size`: 64"):
        preflight(load_xt_config(str(bad)), str(bad))


def test_eval_with_image_data_passes():
    """Held-out image-text data is evaluated now (tests/cli/test_eval_vl.py); its files are checked."""
    sets = ["eval.every_steps=10", "eval.split=0.1"]
    preflight(load_xt_config(VL, sets), VL, sets)


def test_bad_held_out_image_files_are_named(tmp_path):
    from xt.data import DataError
    bad = tmp_path / "held.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "<image>What?"}, '
                   '{"role": "assistant", "content": "7"}], "images": ["gone.png"]}\n')
    sets = ["eval.every_steps=10", "eval.split=0", f"eval.paths=['{bad}']"]
    with pytest.raises(DataError, match=rf"eval\.paths: .*held\.jsonl:1.*gone\.png"):
        preflight(load_xt_config(VL, sets), VL, sets)


def test_image_data_for_a_text_model_is_refused():
    cfg = str(EXAMPLES / "llama_tiny.toml")
    sets = ["data.source='digits_vqa'", "data.tokenizer='qwen3'",
            "data.vision={image_token = '<|image_pad|>', start_token = '', end_token = ''}"]
    with pytest.raises(ConfigError, match=r"data\.vision.*needs a vision-language model; LlamaConfig takes no images"):
        preflight(load_xt_config(cfg, sets), cfg, sets)
