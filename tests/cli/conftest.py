"""Fixtures for the `xt` command tests: a tiny Qwen3-MoE config on a small JSONL corpus."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

TINY_MODEL = textwrap.dedent("""
    [model.config]
    architectures = ["Qwen3MoeForCausalLM"]
    model_type = "qwen3_moe"
    vocab_size = 151936
    hidden_size = 32
    num_hidden_layers = 2
    num_attention_heads = 4
    num_key_value_heads = 2
    head_dim = 8
    intermediate_size = 64
    moe_intermediate_size = 16
    num_experts = 4
    num_experts_per_tok = 2
    norm_topk_prob = true
    router_aux_loss_coef = 0.01
    tie_word_embeddings = true
    eos_token_id = 151645
""")


def write_corpus(path: Path, n: int = 40) -> Path:
    """A JSONL file of `n` short English pre-training records (no two alike)."""
    words = ("the quick brown fox jumps over the lazy dog while seven wise owls watch from an old oak "
             "tree and the river sings softly under the silver moon").split()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            text = " ".join(words[(i * 7 + j) % len(words)] for j in range(12 + i % 9))
            f.write(json.dumps({"text": f"Record {i}: {text}."}) + "\n")
    return path


@pytest.fixture()
def tiny_run(tmp_path: Path) -> Path:
    """A config file for a 4-step run on a small corpus; the run folder is tmp_path/run."""
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_MODEL + textwrap.dedent(f"""
        [data]
        source = "files"
        paths = ["{corpus}"]
        tokenizer = "qwen3"
        tokens_per_micro_batch = 96
        seed = 1

        [train]
        steps = 4
        micro_batches_per_step = 2
        dtype = "fp32"
        log_every = 1
        out_dir = "{tmp_path / 'run'}"

        [optim]
        lr = 1e-2

        [schedule]
        warmup_steps = 1

        [checkpoint]
        every_steps = 2
        keep_last = 0

        [sample]
        prompt = "Record"
        max_new_tokens = 4
    """))
    return cfg
