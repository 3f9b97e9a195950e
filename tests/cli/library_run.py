"""A training run assembled from config sections with library imports only, the way a package above
xt.models and xt.data (the coming xt.rl) composes one; ``xt.cli`` is blocked in this process.

``python library_run.py CONFIG OUT.pt [SECTION.KEY=VALUE ...]`` reads each table of the TOML file
as its section (:data:`SECTIONS`: those of ``xt train``, ``[sample]`` ignored; no top-level struct
is needed, since the library takes sections), trains as the config says (metrics and the HF
export under ``train.out_dir``) and saves ``{"ids": PROBE, "logits": [T, V] float32}`` to OUT.pt:
the trained model's logits on :data:`PROBE` (tests/cli/test_library_assembly.py).
"""
from __future__ import annotations

import importlib.abc
import io
import sys


class _NoCli(importlib.abc.MetaPathFinder):
    """Refuses ``xt.cli`` and its modules: the library must assemble a run without them."""

    def find_spec(self, name, path=None, target=None):
        if name == "xt.cli" or name.startswith("xt.cli."):
            raise ImportError(f"library assembly imported {name}")
        return None


sys.meta_path.insert(0, _NoCli())

import functools  # noqa: E402
import tomllib  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import torch  # noqa: E402
from rich.console import Console  # noqa: E402

from xt.core.checkpoint import seed_everything  # noqa: E402
from xt.core.config import (CheckpointConfig, OptimConfig, ScheduleConfig, TrainConfig,  # noqa: E402
                            apply_overrides, convert_config)
from xt.core.engine import Trainer  # noqa: E402
from xt.data import DataConfig, build_loader  # noqa: E402
from xt.kernels.config import KernelsConfig, apply_kernels_config  # noqa: E402
from xt.models import ModelSection, finish_run_model, run_model_source, save_pretrained, section_config  # noqa: E402
from xt.parallel import (ParallelConfig, apply_layout, check_layout, device_for_run, exporter,  # noqa: E402
                         rank_loader)

PROBE = [785, 3974, 13876, 38835, 34208, 916, 279]  # token ids the logits are compared on


#: the tables a run is assembled from, each a section of the package that reads it ([sample] is the CLI's)
SECTIONS = {"model": ModelSection, "data": DataConfig, "train": TrainConfig, "optim": OptimConfig,
            "schedule": ScheduleConfig, "checkpoint": CheckpointConfig, "parallel": ParallelConfig,
            "kernels": KernelsConfig}


def load_sections(path: str, overrides: list[str]) -> SimpleNamespace:
    """Each table of the TOML file `path` (after the ``--set``-style `overrides`) named in
    :data:`SECTIONS` as its section; a missing table gives the section's defaults, other tables
    are not read. Raises ``xt.core.config.ConfigError`` for a bad entry."""
    data = tomllib.loads(Path(path).read_text())
    origins = apply_overrides(data, overrides)
    return SimpleNamespace(**{name: convert_config(data.get(name, {}), cls, path=path, origins=origins)
                              for name, cls in SECTIONS.items()})


def assemble(cfg: SimpleNamespace) -> Trainer:
    """Model, layout, this rank's loader and the HF export hook from `cfg`'s sections, in a Trainer."""
    check_layout(cfg.parallel, section_config(cfg.model))
    device = device_for_run()
    seed_everything(cfg.train.seed)
    model, read = run_model_source(cfg.model, device)
    apply_kernels_config(cfg.kernels)
    model, dist = apply_layout(model, cfg.parallel, device_type=device.type, device=device, read=read)
    finish_run_model(cfg.model, model)
    loader = rank_loader(functools.partial(build_loader, cfg.data), dist)
    return Trainer(model, loader, cfg.train, cfg.optim, cfg.schedule, cfg.checkpoint, dist=dist,
                   export_hf=exporter(save_pretrained, dist), console=Console(file=io.StringIO()))


def main(config: str, out: str, overrides: list[str]) -> None:
    trainer = assemble(load_sections(config, overrides))
    trainer.fit()
    trainer.model.eval()
    with torch.no_grad():
        logits = trainer.model(torch.tensor(PROBE)).logits.float()
    assert not [m for m in sys.modules if m == "xt.cli" or m.startswith("xt.cli.")]
    torch.save({"ids": PROBE, "logits": logits}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
