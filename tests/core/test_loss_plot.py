"""`loss_figure` / `plot_loss_curve`: the aux loss has its own panel, and the loss axis spans the
loss values, not 0."""
from __future__ import annotations

from pathlib import Path

from xt.core.engine.report import loss_figure, plot_loss_curve

ROWS = [{"step": s, "loss": 7.0 - 0.1 * s, "aux_loss": 0.02 + 0.001 * s} for s in range(1, 11)]


def test_aux_loss_on_its_own_axis_and_loss_axis_not_from_zero(tmp_path: Path):
    fig = loss_figure(ROWS)
    loss_ax, aux_ax = fig.axes
    lo, hi = loss_ax.get_ylim()
    assert 5.5 < lo < 6.0 and 6.9 < hi < 7.5  # the losses span 6.0 .. 6.9
    assert [l.get_label() for l in loss_ax.get_lines()] == ["loss (token-mean CE)"]
    assert list(aux_ax.get_lines()[0].get_ydata()) == [r["aux_loss"] for r in ROWS]
    assert len(loss_figure([{k: v for k, v in r.items() if k != "aux_loss"} for r in ROWS]).axes) == 1
    out = plot_loss_curve(ROWS, tmp_path / "sub" / "loss.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(out.parent.glob(".*"))
