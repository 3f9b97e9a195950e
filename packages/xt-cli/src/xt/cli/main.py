"""The `xt` command: `xt train`, `xt convert`."""
from __future__ import annotations

import sys

import click

from xt.core.config import ConfigError

__all__ = ["main", "cli"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="xt-cli")
def cli() -> None:
    """XT: train Mixture-of-Experts language models (pre-training, SFT) from one CPU to many GPUs.

    Multi-GPU / multi-process: launch the same command with
    `torchrun --nproc-per-node N -m xt.cli.main train CONFIG` (layout from the [parallel] section).
    """


@cli.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a config entry (TOML literal), e.g. --set train.steps=100. Repeatable.")
@click.option("--resume", default=None, metavar="auto|PATH",
              help="Resume from the newest checkpoint in train.out_dir ('auto') or a checkpoint folder.")
def train(config: str, overrides: tuple[str, ...], resume: str | None) -> None:
    """Train the model described by CONFIG (a TOML file; see examples/)."""
    from xt.cli.train import run_train
    from xt.parallel import LayoutError
    try:
        run_train(config, list(overrides), resume)
    except (ConfigError, FileExistsError, LayoutError) as e:
        raise click.ClickException(str(e)) from None


@cli.command()
@click.argument("src", type=click.Path(exists=True))
@click.argument("dst", type=click.Path())
@click.option("--config", "config", default=None, type=click.Path(exists=True, dir_okay=False),
              help="The training config of the run (needed to convert an XT checkpoint to HF).")
def convert(src: str, dst: str, config: str | None) -> None:
    """Convert between an XT training checkpoint and an HF checkpoint folder.

    XT -> HF: SRC is a checkpoint folder (runs/NAME/checkpoints/step-N) and --config the run's TOML.
    HF -> XT: SRC is an HF folder (config.json + safetensors); DST becomes an XT checkpoint that
    `xt train --resume DST` or `model.init_from` can start from.
    """
    from xt.cli.convert import convert_checkpoint
    try:
        convert_checkpoint(src, dst, config)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None


def main() -> None:
    """Entry point of the `xt` console script."""
    cli(prog_name="xt")


if __name__ == "__main__":
    sys.exit(main())
