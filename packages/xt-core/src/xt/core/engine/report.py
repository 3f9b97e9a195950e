"""Terminal progress (rich) and the loss-curve plot (matplotlib, Agg backend)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

__all__ = ["ProgressReporter", "format_metrics", "loss_figure", "plot_curves", "plot_loss_curve"]


def format_metrics(step: int, total: int, m: Mapping[str, Any]) -> str:
    """One log line, e.g. ``step 10/100 loss 3.2100 lr 3.00e-04 grad_norm 1.23 tok/s 5,123``."""
    parts = [f"step {step}/{total}"]
    if m.get("loss") is not None:
        parts.append(f"loss {m['loss']:.4f}")
    if m.get("reward_mean") is not None:
        parts.append(f"reward {m['reward_mean']:.3f}")
    if m.get("aux_loss") is not None:
        parts.append(f"aux {m['aux_loss']:.4f}")
    if m.get("lr") is not None:
        parts.append(f"lr {m['lr']:.2e}")
    if m.get("grad_norm") is not None:
        parts.append(f"grad_norm {m['grad_norm']:.3f}")
    if m.get("tokens_per_s") is not None:
        parts.append(f"tok/s {m['tokens_per_s']:,.0f}")
    if m.get("mfu") is not None:
        parts.append(f"mfu {100 * m['mfu']:.1f}%")
    if m.get("max_memory_gib") is not None:
        parts.append(f"mem {m['max_memory_gib']:.2f} GiB")
    if m.get("eval_loss") is not None:
        parts.append(f"eval_loss {m['eval_loss']:.4f} ppl {m['eval_ppl']:.1f}")
    if m.get("skipped_steps"):
        parts.append(f"skipped {m['skipped_steps']} (non-finite grad norm)")
    return " | ".join(parts)


class ProgressReporter:
    """A rich progress bar on a terminal plus a metrics line every `log_every` steps.

    When the console is not a terminal (CI, files) there is no bar, only the lines. Use it as a
    context manager; `enabled=False` (non-main ranks) makes every method a no-op.

    Args:
        total_steps: the run's last step.
        start_step: the step already done (after a resume), shown as completed.
        log_every: print a line every this many steps (and at the last step).
        enabled: print anything at all.
        console: a `rich.console.Console` (default: stdout).
    """

    def __init__(self, total_steps: int, start_step: int, log_every: int, enabled: bool = True,
                 console: Console | None = None) -> None:
        self.total, self.log_every, self.enabled = total_steps, log_every, enabled
        self.console = console or Console()
        self._progress: Progress | None = None
        self._task = None
        self._start = start_step

    def __enter__(self) -> ProgressReporter:
        if self.enabled and self.console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=self.console, transient=False)
            self._progress.__enter__()
            self._task = self._progress.add_task("train", total=self.total,
                                                 completed=self._start, info="")
        return self

    def update(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Advance the bar to `step`; print a line on log steps and on evaluation steps."""
        if not self.enabled:
            return
        if self._progress is not None:
            loss, reward = metrics.get("loss"), metrics.get("reward_mean")
            info = (f"loss {loss:.4f}" if loss is not None else
                    f"reward {reward:.3f}" if reward is not None else "")
            self._progress.update(self._task, completed=step, info=info)
        if step % self.log_every == 0 or step == self.total or metrics.get("eval_loss") is not None:
            self.print(format_metrics(step, self.total, metrics))

    def print(self, text: str) -> None:
        """Print a line above the bar (or plainly without one)."""
        if self.enabled:
            (self._progress.console if self._progress is not None else self.console).print(
                text, highlight=False, markup=False)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None


def loss_figure(records: Sequence[Mapping[str, Any]], title: str = "training loss"):
    """A matplotlib `Figure` of ``loss`` (and ``eval_loss`` where evaluated) against ``step`` and, when present, ``aux_loss`` on a
    panel of its own below (it is ~100x smaller: on the loss axis it would be a flat line at 0 and
    pull the axis down to 0). Each axis spans its own data. Records without a loss are skipped.

    Returns:
        The figure; ``fig.axes[0]`` is the loss panel, ``fig.axes[1]`` the aux-loss panel if any.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg canvas

    rows = [r for r in records if r.get("loss") is not None]
    aux = [r for r in rows if r.get("aux_loss") is not None]
    fig = Figure(figsize=(7, 5.5 if aux else 4), dpi=100)
    axes = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1]) if aux else [fig.subplots()]
    ax = axes[0]
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="loss (token-mean CE)")
    ev = [r for r in rows if r.get("eval_loss") is not None]
    if ev:
        ax.plot([r["step"] for r in ev], [r["eval_loss"] for r in ev], "o-", label="eval_loss (held out)")
    ax.set_ylabel("loss (nats)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    if aux:
        axes[1].plot([r["step"] for r in aux], [r["aux_loss"] for r in aux], color="tab:orange", label="aux_loss")
        axes[1].set_ylabel("aux_loss")
        axes[1].grid(True, alpha=0.3)
        axes[1].legend()
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    return fig


def plot_curves(records: Sequence[Mapping[str, Any]], path: str | Path, series: Mapping[str, str], *,
                title: str, ylabel: str) -> Path:
    """Write a PNG of one line per metric against ``step``.

    Args:
        records: metrics dicts with ``step`` (e.g. `read_metrics` output).
        path: the PNG to write (parent folders created).
        series: ``{metric key: legend label}``; records where a key is missing or None are skipped
            for that line, and a key with no value at all draws nothing.
        title, ylabel: the plot's title and y-axis label.

    Returns:
        The written path.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg canvas

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    for key, label in series.items():
        rows = [r for r in records if r.get(key) is not None]
        if rows:
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path


def plot_loss_curve(records: Sequence[Mapping[str, Any]], path: str | Path,
                    title: str = "training loss") -> Path:
    """Write the PNG of `loss_figure` to `path` (parent folders created; temp file, then rename).

    Args:
        records: metrics dicts with ``step`` and ``loss`` (e.g. `read_metrics` output); records
            without a loss are skipped.
        path: the PNG to write.
        title: plot title.

    Returns:
        The written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    loss_figure(records, title).savefig(tmp, format="png")
    tmp.replace(path)
    return path
