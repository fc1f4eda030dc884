"""The report's plots as PNG bytes: metric bars fp32 vs INT8, per-layer SQNR, and ``report.png``.

matplotlib's object API (``Figure``, no pyplot): no global state, no display needed.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from edgekit.report.report import Report

FP32_COLOUR, INT8_COLOUR = "#5B7DB1", "#E07B39"
ROLE_COLOURS = ("#5B7DB1", "#6BA368", "#9B6FB0", "#C9A227")
VERDICT_COLOURS = {"PASS": "#1A7F37", "FAIL": "#CF222E", "NOT EVALUATED": "#6E7781"}
# Metrics shown per task, headline first: key -> axis label.
TASK_METRICS: dict[str, dict[str, str]] = {
    "classify": {"top1": "top-1", "top5": "top-5"},
    "detect": {"map50": "AP50", "map": "mAP@[.5:.95]", "map75": "AP75"},
    "segment": {"miou": "mIoU", "pixel_accuracy": "pixel acc."},
}
# Below this SQNR a layer's output noise is within 1 % of its signal power: worth a look.
SQNR_WARN_DB = 20.0
WARN_COLOUR = "#D1242F"


def metric_labels(report: Report) -> dict[str, str]:
    """The metrics to show, headline first: the task's, or its agreement metrics in label-free mode."""
    if (report.evaluation or {}).get("mode") == "label-free":
        from edgekit.precision.agreement import AGREEMENT_METRIC_LABELS

        return AGREEMENT_METRIC_LABELS.get(report.task, {})
    return TASK_METRICS.get(report.task, {})


def metric_bars(report: Report, ax: Axes) -> None:
    """Grouped bars: each task metric for fp32 and INT8, in percent, values printed on the bars."""
    ax.set_title("Task metric, fp32 vs INT8" + (f" ({report.evaluation['images']} images)"
                                                if report.evaluation else ""), fontsize=11, loc="left")
    if not report.metrics:
        ax.text(0.5, 0.5, "not evaluated\n(no --eval-data)", ha="center", va="center", fontsize=12, color="#6E7781",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    labels = {k: v for k, v in metric_labels(report).items() if report.metrics["fp32"].get(k) is not None}
    width = 0.38
    for offset, variant, colour, name in ((-width / 2, "fp32", FP32_COLOUR, "fp32"),
                                          (width / 2, "int8", INT8_COLOUR, "INT8")):
        values = [100.0 * report.metrics[variant][k] for k in labels]
        bars = ax.bar([i + offset for i in range(len(values))], values, width, label=name, color=colour)
        for bar, value in zip(bars, values):
            ax.annotate(f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, value), xytext=(0, 2),
                        textcoords="offset points", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), list(labels.values()))
    ax.set_ylim(0, 110)
    ax.set_ylabel("%")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, fontsize=8, frameon=False)
    _tidy(ax)


def sqnr_chart(report: Report, ax: Axes) -> None:
    """Per-layer SQNR in graph order, one colour per graph, the worst layers named."""
    ax.set_title("Per-layer SQNR (dB, higher is better)", fontsize=11, loc="left")
    layers = sorted(report.layers, key=lambda e: (_role_rank(report, e["role"]), e["index"]))
    if not layers:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", color="#6E7781", transform=ax.transAxes)
        ax.set_axis_off()
        return
    roles = list(dict.fromkeys(e["role"] for e in layers))
    values = [min(e["sqnr_db"], 80.0) for e in layers]
    # Layers under the line are drawn in the warning colour: the table below names them.
    colours = [WARN_COLOUR if v < SQNR_WARN_DB else ROLE_COLOURS[roles.index(e["role"]) % len(ROLE_COLOURS)]
               for e, v in zip(layers, values)]
    ax.bar(range(len(layers)), values, 0.8, color=colours)
    ax.axhline(SQNR_WARN_DB, color=WARN_COLOUR, linewidth=0.8, linestyle="--")
    from matplotlib.patches import Patch

    handles = [Patch(color=ROLE_COLOURS[i % len(ROLE_COLOURS)], label=f"{r}") for i, r in enumerate(roles)]
    handles.append(Patch(color=WARN_COLOUR, label=f"below {SQNR_WARN_DB:.0f} dB"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(handles), fontsize=8,
              frameon=False)
    ax.set_xlabel("quantized layer (graph order)", fontsize=9)
    ax.set_xlim(-1, len(layers))
    ax.set_ylim(0, max(values) * 1.1)
    _tidy(ax)


def figure_png(figure: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buffer.getvalue()


def metric_png(report: Report) -> bytes:
    """The metric bars alone."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.6, 3.2))
    metric_bars(report, figure.add_subplot())
    return figure_png(figure)


def sqnr_png(report: Report) -> bytes:
    """The per-layer SQNR chart alone."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.4, 3.2))
    sqnr_chart(report, figure.add_subplot())
    return figure_png(figure)


def summary_png(report: Report) -> bytes:
    """``report.png``: the verdict line above the metric bars and the SQNR chart."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4.4))
    grid = figure.add_gridspec(1, 2, width_ratios=(1, 1.7), wspace=0.18)
    metric_bars(report, figure.add_subplot(grid[0]))
    sqnr_chart(report, figure.add_subplot(grid[1]))
    figure.suptitle(_headline(report), x=0.01, ha="left", fontsize=12, fontweight="bold",
                    color=VERDICT_COLOURS.get(report.verdict, "#24292F"))
    return figure_png(figure)


def _headline(report: Report) -> str:
    text = f"{report.model} · {report.target} — {report.verdict}"
    if report.drop is not None:
        text += f": {report.headline['key']} drop {report.drop:+.2f} pt (budget {report.max_drop:.2f})"
    if report.latency:
        text += f" · INT8 {report.latency['speedup']:.2f}x fp32 speed"
    return text


def _role_rank(report: Report, role: str) -> int:
    order = [g["role"] for g in report.graphs]
    return order.index(role) if role in order else len(order)


def _tidy(ax: Any) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=8)
