"""`xt train` with ``model.init_from`` an HF folder builds the model on meta and fills it through the
sharded HF load (each rank reads its rows: tests/parallel/test_parallel_sharded_load.py), giving
float32 master weights equal to the non-sharded load, and reading the checkpoint once."""
from __future__ import annotations

from pathlib import Path

import torch


def _spy_readers(monkeypatch) -> list:
    """The checkpoint readers `hf_row_reader` makes from now on (filled as they are made)."""
    import xt.models.hf_rows as hf_rows
    readers, real = [], hf_rows.hf_row_reader

    def spy(path, config):
        read, reader = real(path, config)
        readers.append(reader)
        return read, reader
    monkeypatch.setattr(hf_rows, "hf_row_reader", spy)
    return readers


def test_init_from_hf_folder_loads_through_the_row_reader(tiny_run: Path, tmp_path: Path, monkeypatch):
    from xt.cli.config import load_xt_config
    from xt.cli.train import build_run
    from xt.core.checkpoint import seed_everything
    from xt.models import build_model, from_pretrained, save_pretrained
    cfg = load_xt_config(tiny_run)
    torch.manual_seed(3)
    ref = build_model(dict(cfg.model.config), attn_backend="sdpa").to(torch.bfloat16)  # a bf16 checkpoint
    save_pretrained(ref, tmp_path / "hf", max_shard_size=100_000)
    readers = _spy_readers(monkeypatch)
    cfg = load_xt_config(tiny_run, ["model.config={}", f"model.init_from='{tmp_path / 'hf'}'"])
    seed_everything(0)
    model, _, _ = build_run(cfg, torch.device("cpu"))
    whole = from_pretrained(tmp_path / "hf")
    assert len(readers) == 1
    got, want = dict(model.named_parameters()), dict(whole.named_parameters())
    assert sorted(got) == sorted(want)
    assert all(p.dtype == torch.float32 and torch.equal(p, want[n].float()) for n, p in got.items())
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    stored = sum(t.numel() * t.element_size() for t in ref.state_dict().values()) - ref.lm_head.weight.nbytes
    assert readers[0].bytes_read == stored  # each tensor read once, nothing more


def test_init_from_xt_weights_loads_after_the_layout(tiny_run: Path, tmp_path: Path):
    """XT weights (DCP, `xt convert HF XT`): built on meta, laid out, then DCP fills the shards."""
    from xt.cli.config import load_xt_config
    from xt.cli.train import build_run
    from xt.models import build_model, save_xt_weights
    cfg = load_xt_config(tiny_run)
    torch.manual_seed(3)
    ref = build_model(dict(cfg.model.config), attn_backend="sdpa")
    save_xt_weights(ref, tmp_path / "xt")
    cfg = load_xt_config(tiny_run, ["model.config={}", f"model.init_from='{tmp_path / 'xt'}'"])
    model, _, _ = build_run(cfg, torch.device("cpu"))
    assert all(torch.equal(p, ref.get_parameter(n)) for n, p in model.named_parameters())
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_init_from_an_internvl_hf_folder_loads_through_the_row_reader(tmp_path: Path, monkeypatch):
    """The vision-language family too (issue 15): the digits example's model (a 512-token
    vocabulary), saved as bf16 HF shards, fills `xt train`'s meta model row by row, vision tower,
    projector and MoE experts included; the tied head stays tied and each tensor is read once."""
    import tomllib

    from xt.models import ModelSection, build_model, from_pretrained, run_model_source, save_pretrained
    from xt.parallel import ParallelConfig, apply_layout
    cfg = tomllib.loads((Path(__file__).resolve().parents[2] / "examples" / "internvl_tiny_digits.toml")
                        .read_text())["model"]["config"]
    cfg = {**cfg, "image_token_id": 500, "text_config": {**cfg["text_config"], "vocab_size": 512}}
    torch.manual_seed(3)
    ref = build_model(cfg, attn_backend="sdpa").to(torch.bfloat16)
    save_pretrained(ref, tmp_path / "hf", max_shard_size=100_000)
    readers = _spy_readers(monkeypatch)
    section = ModelSection(init_from=str(tmp_path / "hf"), attn_backend="sdpa")
    model, read = run_model_source(section, "cpu")
    model, _ = apply_layout(model, ParallelConfig(), device_type="cpu", device=torch.device("cpu"), read=read)
    whole = from_pretrained(tmp_path / "hf")
    assert len(readers) == 1
    got, want = dict(model.named_parameters()), dict(whole.named_parameters())
    assert sorted(got) == sorted(want) and any(n.startswith("model.vision_tower.") for n in got)
    assert all(p.dtype == torch.float32 and torch.equal(p, want[n].float()) for n, p in got.items())
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    stored = sum(t.numel() * t.element_size() for t in ref.state_dict().values()) - ref.lm_head.weight.nbytes
    assert readers[0].bytes_read == stored
