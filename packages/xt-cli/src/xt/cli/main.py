"""The `xt` command: `xt train`, `xt convert`, `xt plan`."""
from __future__ import annotations

import os
import sys

import click

from xt.cli.errors import debug_from_env, reported_errors

__all__ = ["main", "cli"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="xt-cli")
@click.option("--debug", is_flag=True, default=False,
              help="Show the full Python traceback of an error (also: environment XT_DEBUG=1).")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """XT: train Mixture-of-Experts language models (pre-training, SFT) from one CPU to many GPUs.

    Multi-GPU / multi-process: launch the same command with
    `torchrun --nproc-per-node N -m xt.cli.main train CONFIG` (layout from the [parallel] section).

    A mistake (config, model config, data, checkpoint) ends with one `error: ...` line naming the
    key, file and line, and exit status 1; Ctrl-C exits with 130. For a bug report, run
    `xt --debug ...` (or set XT_DEBUG=1) to see the full traceback.
    """
    ctx.ensure_object(dict)["debug"] = debug or debug_from_env()


def _debug(ctx: click.Context) -> bool:
    return bool((ctx.find_root().obj or {}).get("debug")) or debug_from_env()


def _last_checkpoint_note(config: str, overrides: tuple[str, ...]) -> str:
    """What to say after Ctrl-C in `xt train`: the newest finished checkpoint of the run, if any."""
    from xt.cli.config import load_xt_config
    from xt.core.checkpoint import latest_checkpoint
    out_dir = load_xt_config(config, list(overrides)).train.out_dir
    last = latest_checkpoint(out_dir)
    if last is None:
        return f"no checkpoint was saved in {out_dir}"
    return f"the last finished checkpoint is {last}; continue with --resume auto"


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))  # a missing file: one error line (load_config)
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a config entry (TOML literal), e.g. --set train.steps=100. Repeatable.")
@click.option("--resume", default=None, metavar="auto|PATH",
              help="Resume from the newest checkpoint in train.out_dir ('auto') or a checkpoint folder.")
@click.pass_context
def train(ctx: click.Context, config: str, overrides: tuple[str, ...], resume: str | None) -> None:
    """Train the model described by CONFIG (a TOML file; see examples/)."""
    # Before CUDA initialises: long or varying micro-batches fragment the default allocator (a
    # 262,144-token step on an H200 failed with 27 GiB reserved but unallocated); the user's own
    # PYTORCH_CUDA_ALLOC_CONF wins. The banner prints the setting in effect.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    with reported_errors(_debug(ctx), on_interrupt=lambda: _last_checkpoint_note(config, overrides)):
        from xt.cli.train import run_train
        run_train(config, list(overrides), resume)


@cli.command()
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--config", "config", default=None, type=click.Path(dir_okay=False),
              help="The training config of the run (needed to convert an XT checkpoint to HF).")
@click.pass_context
def convert(ctx: click.Context, src: str, dst: str, config: str | None) -> None:
    """Convert between an XT training checkpoint and an HF checkpoint folder.

    XT -> HF: SRC is a checkpoint folder (runs/NAME/checkpoints/step-N) and --config the run's TOML.
    HF -> XT: SRC is an HF folder (config.json + safetensors); DST becomes an XT checkpoint that
    `xt train --resume DST` or `model.init_from` can start from.
    """
    with reported_errors(_debug(ctx), also=(ValueError,)):
        from xt.cli.convert import convert_checkpoint
        convert_checkpoint(src, dst, config)


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--world", type=int, required=True, help="Number of GPUs.")
@click.option("--gpu-memory", "gpu_memory", type=float, default=139.0, show_default=True, metavar="GiB",
              help="Memory per GPU in GiB (an H200 has about 139 GiB).")
@click.option("--search", is_flag=True, default=False,
              help="Plan every valid layout (HSDP, EP, activation checkpointing) and list those that fit, fastest first.")
@click.option("--tokens", type=int, default=None, help="Tokens per GPU micro-batch (default data.tokens_per_micro_batch).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a config entry. Repeatable.")
@click.pass_context
def plan(ctx: click.Context, config: str, world: int, gpu_memory: float, search: bool, tokens: int | None,
         overrides: tuple[str, ...]) -> None:
    """Per-GPU memory and estimated speed of CONFIG's layout on --world GPUs, without GPUs.

    The model is built on the meta device; memory per term (parameters, gradients, AdamW state,
    FSDP2 buffers, activations with and without recomputation, loss, all-to-all), the largest
    micro-batch that fits, and the step time from XT's H200 rate table.
    """
    with reported_errors(_debug(ctx), also=(ValueError,)):
        from xt.cli.plan import run_plan
        run_plan(config, list(overrides), world=world, gpu_memory_gib=gpu_memory, search=search, tokens=tokens)


def main() -> None:
    """Entry point of the `xt` console script."""
    cli(prog_name="xt")


if __name__ == "__main__":
    sys.exit(main())
