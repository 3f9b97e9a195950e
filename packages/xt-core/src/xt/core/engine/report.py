"""Terminal progress (rich) and the loss-curve plot (matplotlib, Agg backend)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

__all__ = ["ProgressReporter", "format_metrics", "plot_curves", "plot_loss_curve"]


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
        """Advance the bar to `step`; print a line on log steps."""
        if not self.enabled:
            return
        if self._progress is not None:
            loss, reward = metrics.get("loss"), metrics.get("reward_mean")
            info = (f"loss {loss:.4f}" if loss is not None else
                    f"reward {reward:.3f}" if reward is not None else "")
            self._progress.update(self._task, completed=step, info=info)
        if step % self.log_every == 0 or step == self.total:
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
    fig.savefig(path, format="png")
    return path


def plot_loss_curve(records: Sequence[Mapping[str, Any]], path: str | Path,
                    title: str = "training loss") -> Path:
    """Write a PNG of ``loss`` (and ``aux_loss`` when present) against ``step``.

    Args:
        records: metrics dicts with ``step`` and ``loss`` (e.g. `read_metrics` output); records
            without a loss are skipped.
        path: the PNG to write (parent folders created).
        title: plot title.

    Returns:
        The written path.
    """
    rows = [r for r in records if r.get("loss") is not None]
    return plot_curves(rows, path, {"loss": "loss (token-mean CE)", "aux_loss": "aux_loss"}, title=title,
                       ylabel="loss")
