"""The `xt` command: `xt train`, `xt rl`, `xt convert`, `xt config show|keys`, `xt plan`."""
from __future__ import annotations

import os
import sys

import click

from xt.cli.errors import EXIT_STOPPED, debug_from_env, reported_errors

__all__ = ["main", "cli"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="xt-cli")
@click.option("--debug", is_flag=True, default=False,
              help="Show the full Python traceback of an error (also: environment XT_DEBUG=1).")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """XT: train Mixture-of-Experts language models (pre-training, SFT, RL) from one CPU to many GPUs.

    Multi-GPU / multi-process: launch the same command with
    `torchrun --nproc-per-node N -m xt.cli.main train CONFIG` (layout from the [parallel] section).

    A mistake (config, model config, data, checkpoint) ends with one `error: ...` line naming the
    key, file and line, and exit status 1. SIGINT / SIGTERM during `xt train` save a checkpoint
    and exit with 75; a second Ctrl-C stops at once with 130. For a bug report, run
    `xt --debug ...` (or set XT_DEBUG=1) to see the full traceback.
    """
    ctx.ensure_object(dict)["debug"] = debug or debug_from_env()


def _debug(ctx: click.Context) -> bool:
    return bool((ctx.find_root().obj or {}).get("debug")) or debug_from_env()


def _last_checkpoint_note(out_dir: str) -> str:
    """What to say after Ctrl-C: the newest finished checkpoint under `out_dir`, if any."""
    from xt.core.checkpoint import latest_checkpoint
    last = latest_checkpoint(out_dir)
    if last is None:
        return f"no checkpoint was saved in {out_dir}"
    return f"the last finished checkpoint is {last}; continue with --resume auto"


def _train_out_dir(config: str, overrides: tuple[str, ...]) -> str:
    from xt.cli.config import load_xt_config
    return load_xt_config(config, list(overrides)).train.out_dir


def run_options(command):
    """The arguments every run command takes: CONFIG, ``--set`` (repeatable) and ``--resume``."""
    command = click.pass_context(command)
    command = click.option("--resume", default=None, metavar="auto|PATH",
                           help="Resume from the newest checkpoint in train.out_dir ('auto') or a "
                                "checkpoint folder.")(command)
    command = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                           help="Override a config entry (TOML literal), e.g. --set train.steps=100. "
                                "Repeatable.")(command)
    # a missing file: one error line (load_config)
    return click.argument("config", type=click.Path(dir_okay=False))(command)


@cli.command()
@run_options
def train(ctx: click.Context, config: str, overrides: tuple[str, ...], resume: str | None) -> None:
    """Train the model described by CONFIG (a TOML file). `xt config keys` lists every key with
    its default and meaning; `xt config show CONFIG` prints the config as resolved. The run folder
    (train.out_dir) keeps the resolved config as config.toml.

    SIGINT (Ctrl-C) or SIGTERM: the step under way finishes, a checkpoint is saved, the command
    to continue is printed, and the exit status is 75; a second Ctrl-C stops at once (130).
    """
    # Before CUDA initialises: long or varying micro-batches fragment the default allocator (a
    # 262,144-token step on an H200 failed with 27 GiB reserved but unallocated); the user's own
    # PYTORCH_CUDA_ALLOC_CONF wins. The banner prints the setting in effect.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    with reported_errors(_debug(ctx), on_interrupt=lambda: _last_checkpoint_note(_train_out_dir(config, overrides))):
        from xt.cli.train import run_train
        result = run_train(config, list(overrides), resume)
    if result.interrupted:
        sys.exit(EXIT_STOPPED)


@cli.group("config")
def config_group() -> None:
    """Show a run's resolved config, or list every config key with its default and meaning."""


@config_group.command("show")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a config entry (TOML literal), as for `xt train`. Repeatable.")
@click.pass_context
def config_show(ctx: click.Context, config: str, overrides: tuple[str, ...]) -> None:
    """Print CONFIG as `xt train` resolves it (as `xt rl` does for a file with [task], [rollout],
    [rl] or [orchestrator]): TOML with every default filled in."""
    with reported_errors(_debug(ctx)):
        from xt.cli.config_cmd import show
        click.echo(show(config, list(overrides)), nl=False)


@config_group.command("keys")
@click.argument("section", required=False)
@click.pass_context
def config_keys_cmd(ctx: click.Context, section: str | None) -> None:
    """List the config keys of `xt train` and `xt rl` (of SECTION, e.g. `train` or `rollout`, or
    all): default, type, meaning; each section's header names the commands that read it."""
    with reported_errors(_debug(ctx)):
        from xt.cli.config_cmd import keys_text
        click.echo(keys_text(section), nl=False)


@cli.command()
@click.option("--address", default=None, metavar="auto|HOST:PORT",
              help="Run on Ray and join this cluster (sets orchestrator.kind = 'ray' and orchestrator.address).")
@run_options
def rl(ctx: click.Context, config: str, overrides: tuple[str, ...], resume: str | None, address: str | None) -> None:
    """Reinforcement learning (GRPO family) of the model described by CONFIG.

    Each step samples rollout.group_size responses for rollout.prompts_per_step prompts with XT's
    KV-cache generation, scores them in a reward process pool, and makes rollout.updates_per_step
    policy-gradient updates ([rl] section). Writes metrics.jsonl, reward.png and checkpoints to
    train.out_dir. On one process by default; [orchestrator] kind = "ray" runs the parts as Ray
    actors (Ray embedded in this process, or the cluster of --address).

    SIGINT (Ctrl-C) or SIGTERM: the RL step under way finishes, a checkpoint is saved, the command
    to continue is printed, and the exit status is 75; a second Ctrl-C stops at once (130).
    """
    if address is not None:
        overrides = (*overrides, "orchestrator.kind=ray", f"orchestrator.address={address}")
    with reported_errors(_debug(ctx), on_interrupt=lambda: _last_checkpoint_note(_rl_out_dir(config, overrides))):
        from xt.cli.rl import run_rl
        result = run_rl(config, list(overrides), resume)
    if result.interrupted:
        sys.exit(EXIT_STOPPED)


def _rl_out_dir(config: str, overrides: tuple[str, ...]) -> str:
    from xt.cli.rl_config import load_rl_config
    return load_rl_config(config, list(overrides)).train.out_dir


@cli.command()
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--config", "config", default=None, type=click.Path(dir_okay=False),
              help="The training config of the run (XT -> HF; default: the config.toml that "
                   "xt train saved in the run folder).")
@click.pass_context
def convert(ctx: click.Context, src: str, dst: str, config: str | None) -> None:
    """Convert between an XT training checkpoint and an HF checkpoint folder.

    XT -> HF: SRC is a checkpoint folder (runs/NAME/checkpoints/step-N); the run's config comes
    from runs/NAME/config.toml unless --config is given. DST gets the weights, config.json,
    generation_config.json and the tokenizer.
    HF -> XT: SRC is an HF folder (config.json + safetensors); DST becomes XT weights (DCP) that
    `model.init_from = "DST"` starts a run from (not a training checkpoint: no optimizer state).
    """
    with reported_errors(_debug(ctx), also=(ValueError,)):
        from xt.cli.convert import convert_checkpoint
        out = convert_checkpoint(src, dst, config)
        click.echo(f"xt convert: wrote {out} from {src}")


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
