"""`xt train` on a `[[data.mix]]` of two files: the steps draw the mixed stream's micro-batches and the
report gives the realised shares."""
from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from cli_helpers import metric_rows


def test_mix_trains_on_the_weighted_stream_and_reports_it(tiny_run: Path, tmp_path: Path):
    from xt.cli.config import load_xt_config
    from xt.cli.train import run_train
    from xt.data import build_loader

    a, b = tmp_path / "corpus.jsonl", tmp_path / "b.jsonl"  # the fixture's 40 records, and 12 others
    b.write_text("".join(line.replace("Record", "Other") for line in a.read_text().splitlines(True)[:12]))
    text = tiny_run.read_text().replace('source = "files"\n', 'source = "mix"\n')
    text = text.replace(f'paths = ["{tmp_path / "corpus.jsonl"}"]\n', "")
    text += f'\n[[data.mix]]\nsource = "files"\npaths = ["{a}"]\nweight = 2\n' \
            f'\n[[data.mix]]\nsource = "files"\npaths = ["{b}"]\nweight = 1\n'
    cfg_path = tmp_path / "mix.toml"
    cfg_path.write_text(text)
    sets = ["train.steps=3", "checkpoint.every_steps=0", "checkpoint.hf_export=false", "sample.max_new_tokens=0"]
    out = io.StringIO()
    run_train(cfg_path, sets, console=Console(file=out, width=400))
    text = out.getvalue()
    assert f"data mix    {a} 66.7%, {b} 33.3% of the micro-batches drawn (weights 2, 1)" in text, text
    cfg = load_xt_config(cfg_path, sets)
    assert load_xt_config(tmp_path / "run" / "config.toml") == cfg  # the mix survives the saved config
    stream = build_loader(cfg.data)
    for row in metric_rows(tmp_path / "run"):
        want = sum(next(stream)["input_ids"].numel() for _ in range(cfg.train.micro_batches_per_step))
        assert row["num_tokens"] == want
