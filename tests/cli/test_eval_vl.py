"""`[eval]` on image-text data (issue 15): `xt train` of the digits example with ``eval.split``
reports a held-out loss equal to a float64 recomputation with transformers' InternVL on the
exported weights, each held-out conversation run alone with its own tiles; the split's
conversations (with their images) never reach the training stream."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from rich.console import Console

from cli_helpers import metric_rows

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "internvl_tiny_digits.toml"


def _float64_loss_alone(hf_dir: Path, batches: list[dict], image_token_id: int, tokens_per_tile: int) -> tuple[float, int]:
    """Σ CE / Σ label tokens, each document of `batches` alone with its tiles, transformers in float64."""
    from transformers import InternVLForConditionalGeneration
    hf = InternVLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float64,
                                                          experts_implementation="eager").eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            cu, tile = b["cu_seqlens"].tolist(), 0
            for s, e in zip(cu[:-1], cu[1:]):
                ids, labels = b["input_ids"][s:e], b["labels"][s:e]
                n = int((ids == image_token_id).sum()) // tokens_per_tile
                pixels = b["pixel_values"][tile:tile + n].to(torch.float64)
                tile += n
                logits = hf(input_ids=ids[None], pixel_values=pixels if n else None).logits[0]
                keep = labels != -100
                total += float(torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum"))
                count += int(keep.sum())
            assert tile == b["pixel_values"].shape[0]  # every tile belongs to one document
    return total / count, count


def test_image_text_eval_loss_equals_a_float64_recomputation(tmp_path: Path):
    from xt.cli.config import load_xt_config
    from xt.cli.train import run_train
    from xt.data import build_eval_batches, build_loader, split_dataset
    from xt.data.vl_dataset import build_vl_dataset

    sets = ["data.max_documents=300", "eval.every_steps=2", "eval.split=0.05", "eval.max_tokens=4096", "train.steps=2",
            "train.dtype='fp32'",
            "checkpoint.every_steps=0", "checkpoint.save_final=false", "sample.max_new_tokens=0",
            f"train.out_dir='{tmp_path / 'run'}'"]
    out = io.StringIO()
    run_train(EXAMPLE, sets, console=Console(file=out, width=300))
    evals = [r for r in metric_rows(tmp_path / "run") if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2]
    cfg = load_xt_config(EXAMPLE, sets)
    held = build_eval_batches(cfg.data, cfg.eval)
    assert all(b["pixel_values"].shape[1:] == (3, 32, 32) for b in held.batches)
    mc = cfg.model.config
    want, tokens = _float64_loss_alone(tmp_path / "run" / "hf", held.batches, mc["image_token_id"],
                                       mc["image_seq_length"])
    assert evals[0]["eval_tokens"] == tokens == held.num_tokens > 0
    assert evals[0]["eval_loss"] == pytest.approx(want, rel=1e-6)
    assert f"eval: {tokens} held-out label tokens every 2 steps" in out.getvalue()

    # the split: 15 of the 300 conversations held out, none of them (text or image) in training
    train = build_loader(cfg.data, eval_split=0.05).dataset
    _, eval_ds = split_dataset(build_vl_dataset(cfg.data), 0.05, cfg.data.seed)
    held_images = {p for ims in eval_ds.images for p in ims}
    assert (train.num_documents, eval_ds.num_documents) == (285, 15)
    assert held_images.isdisjoint({p for ims in train.images for p in ims}) and len(held_images) == 15
    assert sum(int((b["input_ids"] == mc["image_token_id"]).sum()) for b in held.batches) == 15 * 16


def test_image_text_eval_batches_split_over_ranks():
    """Data-parallel ranks take batches r, r + R, ... of the same list, each with its own tiles; a
    rank short of one gets a no-loss copy that still carries its tiles (a forward needs them)."""
    from xt.cli.config import load_xt_config
    from xt.data import build_eval_batches
    cfg = load_xt_config(EXAMPLE, ["data.max_documents=300", "eval.every_steps=2", "eval.split=0.05",
                                   "data.tokens_per_micro_batch=256"])
    whole = build_eval_batches(cfg.data, cfg.eval)
    world = len(whole) + 1  # the last rank only pads
    ranks = [build_eval_batches(cfg.data, cfg.eval, r, world) for r in range(world)]
    assert all(len(r) == 1 and r.num_tokens == whole.num_tokens for r in ranks)
    for r, b in zip(ranks[:-1], whole.batches):
        assert all(torch.equal(r.batches[0][k], b[k]) for k in ("input_ids", "labels", "pixel_values"))
    pad = ranks[-1].batches[0]
    assert bool((pad["labels"] == -100).all()) and torch.equal(pad["pixel_values"], whole.batches[0]["pixel_values"])
    image_tokens = sum(int((b["input_ids"] == cfg.model.config["image_token_id"]).sum()) for b in whole.batches)
    assert image_tokens == 16 * sum(b["pixel_values"].shape[0] for b in whole.batches)
