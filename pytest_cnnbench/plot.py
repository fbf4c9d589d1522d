"""Charts of a run: per model, latency by backend and accuracy against latency.

matplotlib is optional (``pytest-cnnbench[plot]``) and imported only when a chart is drawn,
through ``lazy.require``; drawing uses the Agg canvas directly, so no global pyplot state
or display is involved. ``plot()`` returns a ``PlotSummary`` read back from the drawn figure
(axes labels, bar heights, points), so what was drawn can be checked without an image diff.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from pathlib import Path
from typing import Any, Optional, Sequence

from .lazy import require
from .results import cell_key

FORMATS = (".png", ".svg", ".pdf")
DPI = 100
PANEL_HEIGHT_IN = 4.8
WIDTH_IN = 14.0
LOG_RATIO = 30.0  # log scale when the largest value is this many times the smallest


@dataclasses.dataclass
class AxesSummary:
    title: str
    xlabel: str
    ylabel: str
    xscale: str
    yscale: str
    xticklabels: list[str]
    bars: list[float]  # heights, left to right
    points: list[tuple[float, float]]  # scatter (x, y)
    texts: list[str]  # annotations and messages drawn inside the axes
    legend: list[str]


@dataclasses.dataclass
class PlotSummary:
    path: Path
    width: int  # pixels (PNG); for vector formats, at DPI
    height: int
    title: str
    axes: list[AxesSummary]



def _measured(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with a latency, one per cell: a cell measured again by the same test (a rerun) keeps
    its last measurement, so every bar is a distinct cell."""
    from .table import test_name

    cells: dict[tuple, dict[str, Any]] = {}
    for r in results:
        if (r.get("latency_ms") or {}).get("p50") is None:
            continue
        row = {**r, "test_name": test_name(r)}
        key = cell_key(row)
        cells.pop(key, None)
        cells[key] = row
    return list(cells.values())


def cell_labels(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Backend, plus whatever else varies among ``rows`` (source, test, device, precision, batch size)."""
    parts = []
    for field, fmt in (("source", "{}"), ("test_name", "{}"), ("device", "{}"), ("precision", "{}"),
                       ("batch_size", "bs{}")):
        if len({r.get(field) for r in rows}) > 1:
            parts.append((field, fmt))
    labels = []
    for r in rows:
        extra = " ".join(fmt.format(r.get(field)) for field, fmt in parts)
        labels.append(f"{r['backend']}\n{extra}" if extra else str(r["backend"]))
    return labels


def _wide(values: Sequence[float]) -> bool:
    positive = [v for v in values if v and v > 0]
    return bool(positive) and max(positive) / min(positive) > LOG_RATIO


def _ms(value: float) -> str:
    return f"{value:.3g} ms" if value >= 0.01 else f"{value * 1000:.3g} µs"


def figure(results: Sequence[dict[str, Any]], title: Optional[str] = None) -> Any:
    """The matplotlib Figure: one row per model with two panels (latency bars, accuracy vs latency)."""
    mpl = require("matplotlib", extra="plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = _measured(results)
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig = Figure(figsize=(WIDTH_IN, PANEL_HEIGHT_IN * max(1, len(models)) + 0.5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title or "pytest-cnnbench", fontsize=13)
    if not rows:
        ax = fig.add_subplot(1, 1, 1)
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no measured cells (all skipped or failed)", ha="center", va="center", fontsize=14)
        return fig

    cmap = mpl.colormaps["tab10"]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    color = {b: cmap(i % 10) for i, b in enumerate(backends)}
    axes = fig.subplots(len(models), 2, squeeze=False)
    for (left, right), model in zip(axes, models):
        cells = [r for r in rows if r["model"] == model]
        _latency_panel(left, model, cells, color)
        _accuracy_panel(right, model, cells, color)
    return fig


def _latency_panel(ax: Any, model: str, cells: list[dict[str, Any]], color: dict[str, Any]) -> None:
    labels = cell_labels(cells)
    lat = [r["latency_ms"] for r in cells]
    p50 = [l["p50"] for l in lat]
    p90 = [l.get("p90") for l in lat]
    p99 = [l.get("p99") for l in lat]
    xs = list(range(len(cells)))
    ax.bar(xs, p50, color=[color[r["backend"]] for r in cells], width=0.6, zorder=2)
    # The p50's 95% interval (latency_ms.ci95_rel, the table's ±ci) as an error bar on the bar's top.
    spans = [(x, v, v * l["ci95_rel"]) for x, v, l in zip(xs, p50, lat) if l.get("ci95_rel")]
    if spans:
        ax.errorbar([s[0] for s in spans], [s[1] for s in spans], yerr=[s[2] for s in spans], fmt="none",
                    ecolor="dimgray", elinewidth=1.5, capsize=5, label="95% CI of p50", zorder=5)
    tails = [(x, a, b) for x, a, b in zip(xs, p90, p99) if a is not None and b is not None]
    if tails:
        ax.vlines([t[0] for t in tails], [p50[t[0]] for t in tails], [t[2] for t in tails], colors="black", linewidth=1, zorder=3)
        ax.scatter([t[0] for t in tails], [t[1] for t in tails], marker="_", s=260, linewidths=2, color="black", label="p90", zorder=4)
        ax.scatter([t[0] for t in tails], [t[2] for t in tails], marker="v", s=40, color="crimson", label="p99", zorder=4)
    log = _wide(p50 + [v for v in p99 if v])
    if log:
        ax.set_yscale("log")
    for x, value, top in zip(xs, p50, p99):
        ax.annotate(_ms(value), (x, top if top else value), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=9)
    crowded = len(cells) > 4 and max(len(line) for label in labels for line in label.split("\n")) > 10
    ax.set_xticks(xs, labels, rotation=25 if crowded else 0, ha="right" if crowded else "center", fontsize=9)
    ax.set_ylabel("latency per batch (ms" + (", log scale)" if log else ")"))
    ax.set_xlabel("backend")
    batch = {r["batch_size"] for r in cells}
    ax.set_title(f"{model}: latency by backend" + (f" (batch size {batch.pop()})" if len(batch) == 1 else ""))
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3, which="both", zorder=0)
    from matplotlib.patches import Patch

    handles, names = ax.get_legend_handles_labels()
    ax.legend([Patch(color="lightgray"), *handles], ["p50 (bar)", *names], loc="best", fontsize=8)


def _accuracy_panel(ax: Any, model: str, cells: list[dict[str, Any]], color: dict[str, Any]) -> None:
    """Accuracy against latency, one point per cell (backend x precision x ...): the precision trade.

    Where no cell of the model has meaningful accuracy (random weights, synthetic labels), top-1
    accuracy would be noise around chance: the panel plots top-1 agreement with eager fp32 instead,
    which does mean something there."""
    labelled = [r for r in cells if r.get("top1") is not None]
    by_agreement = bool(labelled) and not any(r.get("accuracy_valid") for r in labelled)
    if by_agreement:
        def value(r: dict[str, Any]) -> Optional[float]:
            if r["backend"] == "eager" and r.get("precision") == "fp32":
                return 100.0  # the reference itself
            agree = r.get("agreement") or {}
            return None if agree.get("top1_agree") is None else 100.0 * agree["top1_agree"]

        ax.set_title(f"{model}: top-1 agreement with eager fp32 vs p50 latency (one point per cell)")
        ax.set_ylabel("top-1 agreement with eager fp32 (%)")
    else:
        def value(r: dict[str, Any]) -> Optional[float]:
            return None if r.get("top1") is None else 100.0 * r["top1"]

        ax.set_title(f"{model}: top-1 accuracy vs p50 latency (one point per cell)")
        ax.set_ylabel("top-1 accuracy (%)")
    ax.set_xlabel("p50 latency per batch (ms)")
    points = [(r, label, value(r)) for r, label in zip(cells, cell_labels(cells)) if value(r) is not None]
    if not points:
        ax.text(0.5, 0.5, "no accuracy measured", ha="center", va="center", transform=ax.transAxes)
        return
    xs = [r["latency_ms"]["p50"] for r, _, _ in points]
    ys = [y for _, _, y in points]
    hollow_any = not by_agreement and any(r.get("accuracy_valid") is False for r, _, _ in points)
    # Colour = backend (as in the bars), marker = the rest of the cell (source, device, precision, batch
    # size); a legend rather than labels beside the points, which overprint where cells are close.
    shapes = "osD^vPX<>p*h"
    rests = list(dict.fromkeys(label.partition("\n")[2] for _, label, _ in points))
    for (r, label, y), x in zip(points, xs):
        hollow = not by_agreement and r.get("accuracy_valid") is False
        ax.scatter([x], [y], s=70, zorder=3, edgecolors=color[r["backend"]], linewidths=1.5,
                   marker=shapes[rests.index(label.partition("\n")[2]) % len(shapes)],
                   facecolors="none" if hollow else color[r["backend"]], label=label.replace("\n", " "))
    # The precision trade: join each backend's points across precisions (same everything else).
    trades: dict[tuple, list[tuple[float, float]]] = {}
    for (r, _, y), x in zip(points, xs):
        key = (r.get("source"), r.get("test_name"), r["backend"], r.get("device"), r["batch_size"])
        trades.setdefault(key, []).append((x, y))
    for key, line in trades.items():
        if len(line) > 1:
            line.sort()
            ax.plot([p[0] for p in line], [p[1] for p in line], color=color[key[2]], alpha=0.4, linewidth=1, zorder=2)
    ax.legend(loc="best", fontsize=8)
    if _wide(xs):
        ax.set_xscale("log")
        ax.set_xlabel("p50 latency per batch (ms, log scale)")
    low, high = min(ys), max(ys)
    pad = max(0.5, 0.15 * (high - low))
    ax.set_ylim(max(0.0, low - pad), min(100.0 + pad / 4, high + pad) if high + pad > low else high + 1)
    ax.margins(x=0.2)
    ax.grid(alpha=0.3, which="both")
    if by_agreement:
        ax.text(0.01, 0.02, "accuracy not meaningful here (random weights or synthetic labels): agreement shown",
                transform=ax.transAxes, fontsize=8, color="dimgray")
    elif hollow_any:
        ax.text(0.01, 0.02, "hollow: accuracy not meaningful (random weights or synthetic labels)",
                transform=ax.transAxes, fontsize=8, color="dimgray")


def describe(fig: Any) -> tuple[str, list[AxesSummary]]:
    """What a figure shows, read from its artists."""
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer

    out = []
    for ax in fig.axes:
        bars = [float(patch.get_height()) for c in ax.containers if isinstance(c, BarContainer) for patch in c]
        points = [(float(x), float(y)) for coll in ax.collections if isinstance(coll, PathCollection)
                  and coll.get_label() not in ("p90", "p99") for x, y in coll.get_offsets()]
        legend = ax.get_legend()
        out.append(AxesSummary(
            title=ax.get_title(), xlabel=ax.get_xlabel(), ylabel=ax.get_ylabel(), xscale=ax.get_xscale(),
            yscale=ax.get_yscale(), xticklabels=[t.get_text() for t in ax.get_xticklabels()] if ax.axison else [],
            bars=bars, points=points, texts=[t.get_text() for t in ax.texts],
            legend=[t.get_text() for t in legend.get_texts()] if legend is not None else [],
        ))
    suptitle = fig.get_suptitle() if hasattr(fig, "get_suptitle") else ""
    return suptitle, out


def svg_text(results: Sequence[dict[str, Any]], title: Optional[str] = None, salt: str = "cnnbench") -> str:
    """The chart as an ``<svg>`` element to inline in an HTML page: text kept as text (small, searchable),
    element ids made unique per ``salt`` (several charts share one page), no XML prolog or DTD."""
    import io

    mpl = require("matplotlib", extra="plot")
    fig = figure(results, title)
    buffer = io.StringIO()
    with mpl.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buffer, format="svg", dpi=DPI, metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's header; ValueError when it is not a PNG."""
    head = Path(path).read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG file")
    return struct.unpack(">II", head[16:24])


def plot(results: Sequence[dict[str, Any]], path: Path, title: Optional[str] = None) -> PlotSummary:
    """Draw ``results`` into ``path`` (format from its extension); returns what was drawn."""
    from .cache import atomic_path

    fig = figure(results, title)
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=DPI)
    suptitle, axes = describe(fig)
    if fmt == "png":
        width, height = png_size(path)
    else:
        width, height = (math.ceil(v * DPI) for v in fig.get_size_inches())
    return PlotSummary(path, width, height, suptitle, axes)
