"""`[sample]` with an image (issue 15): `xt train`'s greedy sample of a vision-language run shows
``sample.image`` in the user turn; on the digits example's model (random weights) the decoded text
equals transformers' greedy ``generate`` on the same ids and tiles; bad settings are refused in
preflight with the key named."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xt.cli.config import load_xt_config
from xt.cli.preflight import preflight
from xt.core.config import ConfigError

EXAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "internvl_tiny_digits.toml")


def test_greedy_sample_with_an_image_equals_transformers(tmp_path):
    from transformers import InternVLForConditionalGeneration

    from xt.cli.train import greedy_sample
    from xt.data import load_tokenizer
    from xt.data.vl_prompt import vl_prompt
    from xt.models import build_model, from_pretrained, save_pretrained
    cfg = load_xt_config(EXAMPLE)
    torch.manual_seed(2)
    save_pretrained(build_model(dict(cfg.model.config), attn_backend="sdpa"), tmp_path / "hf")
    ours, tok = from_pretrained(tmp_path / "hf"), load_tokenizer("qwen3")
    prompt = "Which digit is handwritten in this image?"
    text = greedy_sample(ours, tok, prompt, 8, chat=True, image="digits_vqa:7", vision=cfg.data.vision)
    ids, pixels = vl_prompt(tok, cfg.data.vision, prompt, ["digits_vqa:7"])
    hf = InternVLForConditionalGeneration.from_pretrained(tmp_path / "hf", experts_implementation="eager").eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        ref = hf.generate(input_ids=x, attention_mask=torch.ones_like(x), pixel_values=pixels, max_new_tokens=8,
                          do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    assert text == tok.decode(ref[0, len(ids):], skip_special_tokens=True) and text


@pytest.mark.parametrize("sets,needle", [
    (["sample.chat=false"], r"sample\.image.*needs chat = true"),  # the example shows an image
    (["sample.chat=true", "sample.max_new_tokens=4", "sample.image='nowhere.png'"], r"`sample\.image`: sample\.image: image 'nowhere\.png' does not exist"),
])
def test_bad_sample_images_are_refused(sets, needle):
    with pytest.raises(ConfigError, match=needle):
        preflight(load_xt_config(EXAMPLE, sets), EXAMPLE, sets)


def test_an_image_prompt_for_a_text_run_is_refused():
    cfg = str(Path(EXAMPLE).parent / "llama_tiny.toml")
    sets = ["sample.chat=true", "sample.image='digits_vqa:3'", "sample.max_new_tokens=4"]
    with pytest.raises(ConfigError, match=r"sample\.image.*needs a vision-language run with \[data\.vision\]"):
        preflight(load_xt_config(cfg, sets), cfg, sets)
