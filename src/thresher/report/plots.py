"""The report's figures: matplotlib (Agg, no display) drawn to PNG and returned base64-encoded.

Each function takes gathered numbers, never artefacts, and returns the text
that goes after ``data:image/png;base64,`` in an ``<img>``, so the page is one
self-contained file.
"""

from __future__ import annotations

import base64
import functools
import io
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from thresher.report.gather import Composition, Histogram, Projection, StepInfo

MAX_VALUES = 12  # composition values drawn; the rest are summed as "other"
_DPI = 96


def _untrusted_text(draw: Callable[..., str]) -> Callable[..., str]:
    """Draw with labels taken as plain text: values and step names come from the user's data.

    Without this, a ``$`` pair in a source name is parsed as mathtext (and an
    unbalanced one fails the whole report), and a character the font lacks
    warns on every figure; it is drawn as a box instead.
    """

    @functools.wraps(draw)
    def wrapped(*args, **kwargs) -> str:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)
            return draw(*args, **kwargs)

    return wrapped


def _figure(width: float, height: float, **margins: float):
    """A bare Figure (it draws with Agg on savefig: no pyplot, no display, no change to a notebook's backend).

    Margins are fixed (``subplots_adjust``) rather than computed by a layout
    engine, which would draw every figure twice.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    fig.subplots_adjust(**{"left": 0.12, "right": 0.97, "bottom": 0.14, "top": 0.88, **margins})
    return fig


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@_untrusted_text
def step_counts(steps: Sequence[StepInfo]) -> str:
    """Horizontal bars per step: rows kept, dropped (of the rows the step saw) and added (synthetic rows)."""
    shown = [s for s in steps if s.rows_out is not None and s.rows_in is not None]
    height = 0.6 * max(len(shown), 1) + 1.2
    fig = _figure(8, height, left=0.3, bottom=0.55 / height, top=1 - 0.35 / height)
    ax = fig.add_subplot()
    names = [f"{s.name} ({s.step})" for s in shown]
    kept = np.array([min(s.rows_in, s.rows_out) for s in shown], dtype=float)
    dropped = np.array([s.dropped for s in shown], dtype=float)
    added = np.array([s.added for s in shown], dtype=float)
    y = np.arange(len(shown))[::-1]
    ax.barh(y, kept, color="#3b7dd8", label="kept")
    ax.barh(y, dropped, left=kept, color="#e07b39", label="dropped")
    if added.any():
        ax.barh(y, added, left=kept, color="#40a070", label="added")
    ax.set_yticks(y, names)
    ax.set_xlabel("rows")
    ax.legend(loc="lower right")
    ax.set_title("rows kept and dropped per step")
    return _png(fig)


@_untrusted_text
def histogram(h: Histogram) -> str:
    fig = _figure(6, 3.2)
    ax = fig.add_subplot()
    widths = np.diff(h.edges)
    ax.bar(h.edges[:-1], h.counts, width=widths, align="edge", color="#3b7dd8", edgecolor="white", linewidth=0.4)
    ax.axvline(h.mean, color="#e07b39", linestyle="--", linewidth=1, label=f"mean {h.mean:.4g}")
    ax.set_title(h.title, fontsize=10)
    ax.set_ylabel("rows")
    ax.legend(fontsize=8)
    return _png(fig)


@_untrusted_text
def composition(c: Composition) -> str:
    """Stacked bars of each stage's shares of the column's values (top values, the rest as "other")."""
    stages = [s for s in c.stages if c.counts.get(s) is not None]
    values = c.values()
    top, rest = values[:MAX_VALUES], values[MAX_VALUES:]
    fig = _figure(7, 3.4, right=0.74, bottom=0.24)
    ax = fig.add_subplot()
    x = np.arange(len(stages))
    bottom = np.zeros(len(stages))
    colours = _colours(len(top) + (1 if rest else 0))
    totals = np.array([max(sum(c.counts[s].values()), 1) for s in stages], dtype=float)
    series = [(v, [c.counts[s].get(v, 0) for s in stages]) for v in top]
    if rest:
        series.append(("other", [sum(c.counts[s].get(v, 0) for v in rest) for s in stages]))
    for (label, counts), colour in zip(series, colours):
        share = np.array(counts, dtype=float) / totals
        ax.bar(x, share, bottom=bottom, color=colour, label=label[:30])
        bottom += share
    ax.set_xticks(x, stages, rotation=20, ha="right")
    ax.set_ylabel("share of rows")
    ax.set_ylim(0, 1)
    ax.set_title(f"composition by {c.column}", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _png(fig)


@_untrusted_text
def projection(p: Projection) -> str:
    fig = _figure(6.5, 5.5, bottom=0.1, top=0.93)
    ax = fig.add_subplot()
    ax.scatter(p.pool_xy[:, 0], p.pool_xy[:, 1], s=4, c="#b0b0b0", alpha=0.6, linewidths=0, label=f"pool ({len(p.pool_xy)} of {p.n_pool})")
    if p.selected_xy is not None and len(p.selected_xy):
        ax.scatter(p.selected_xy[:, 0], p.selected_xy[:, 1], s=7, c="#d6336c", alpha=0.8, linewidths=0,
                   label=f"selected ({len(p.selected_xy)} of {p.n_selected})")
    ev = p.explained_variance
    ax.set_xlabel(f"PC1 ({ev[0]:.1%} of variance)")
    ax.set_ylabel(f"PC2 ({ev[1]:.1%} of variance)" if len(ev) > 1 else "PC2")
    ax.set_title("PCA map of the pool, selection highlighted", fontsize=10)
    ax.legend(fontsize=8, markerscale=3)
    return _png(fig)


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab20"] if n > 10 else colormaps["tab10"]
    return [cmap(i % cmap.N) for i in range(n)]
