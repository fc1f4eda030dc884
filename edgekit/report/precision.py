"""The report's mixed-precision sections: the layers kept in float, and the per-layer sensitivity ranking.

Both come from the bundle: ``recipe.json``'s ``calibration.mixed_precision`` (written by
``edgekit export --precision auto``: the float layers, the drop of full INT8 and with them,
the latency they cost) and ``sensitivity.json`` (written by ``edgekit sensitivity``; the
search's own ranking where there is none).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgekit.report.report import Report

SENSITIVITY_JSON, SENSITIVITY_PNG = "sensitivity.json", "sensitivity.png"
SENSITIVITY_ROWS = 25  # rows of the ranking shown before "show all"
PLOT_ROWS = 20


def precision_summary(bundle: str | Path, calibration: Mapping[str, Any], drop_after: float | None) -> dict[str, Any]:
    """What the report says about mixed precision (``Report.precision``); ``notes`` go to the report's notes."""
    record = dict(calibration.get("mixed_precision") or {})
    path = Path(bundle) / SENSITIVITY_JSON
    stored = json.loads(path.read_text()) if path.is_file() else None
    out: dict[str, Any] = {}
    notes = []
    if record:
        rows = record.pop("sensitivity", [])
        record.pop("trials", None)
        out["search"] = {**record, "drop_measured": drop_after}
        if stored is None:
            out["sensitivity"] = {"source": "the export's mixed-precision search", "mode": record.get("mode"),
                                  "metric": record.get("metric"), "rows": rows}
        floats = ", ".join(f"{f['node']}" for f in record.get("float_layers", [])[:4])
        more = record.get("float_count", 0) - 4
        notes.append(
            f"mixed precision ({record.get('mode')}, budget {record.get('budget')} pt): "
            f"{record.get('float_count', 0)} of {record.get('quantizable_layers', '?')} layers kept in "
            f"{record.get('float_precision')}" + (f" ({floats}{f' and {more} more' if more > 0 else ''})" if floats
                                                  else "")
            + f"; drop {record.get('drop_int8')} pt with every layer INT8, {record.get('drop')} pt with them "
              f"({record.get('verdict')})."
        )
    if stored is not None:
        out["sensitivity"] = {"source": f"edgekit sensitivity ({SENSITIVITY_JSON})", **stored}
    return {**out, "notes": notes}


def precision_sections(report: Report) -> str:
    """HTML sections: layers kept in float (when a search ran), the sensitivity ranking (when measured)."""
    return _search_section(report) + _sensitivity_section(report)


def _search_section(report: Report) -> str:
    from edgekit.report.html import _section, _table

    search = (report.precision or {}).get("search")
    if not search:
        return ""
    lat = search.get("latency") or {}
    measured = search.get("drop_measured")
    facts = [
        ["mode", escape(f"{search.get('mode')}: {search.get('mode_description', '')}")],
        ["budget", f"{search.get('budget')} pt of {escape(str(search.get('metric')))}"],
        ["drop, every layer INT8", f"{search.get('drop_int8')} pt (search, {escape(str(search.get('scored_with')))}"
                                   f", {search.get('images')} images)"],
        ["drop, mixed precision", f"{search.get('drop')} pt (search) · "
                                  + (f"{measured:.2f} pt (this report)" if measured is not None else "not measured")],
        ["verdict", escape(str(search.get("verdict")))],
        ["float layers", f"{search.get('float_count')} of {search.get('quantizable_layers')} quantizable layers, "
                         f"{escape(str(search.get('float_precision')))}"],
        ["latency vs full INT8", f"{lat.get('int8_ms')} → {lat.get('mixed_ms')} ms "
                                 f"({lat.get('cost_pct')} %, {escape(str(lat.get('backend')))}, median of "
                                 f"{lat.get('runs')} interleaved runs)" if lat else "not measured"],
        ["search", f"{search.get('evaluations')} float sets evaluated in {search.get('search_seconds')} s, "
                   f"sensitivity {search.get('sensitivity_seconds')} s"],
    ]
    rows = [[escape(f["role"]), f"<code>{escape(f['node'])}</code>", escape(f["op_type"]), escape(f["precision"])]
            for f in search.get("float_layers", [])]
    body = _table(["", ""], facts, header=False, css="kv")
    if rows:
        body += "<p>Layers kept in float:</p>" + _table(["graph", "layer", "op", "precision"], rows)
    return _section("Mixed precision: layers kept in float", body)


def _sensitivity_section(report: Report) -> str:
    from edgekit.report.html import _img, _section, _table

    sens = (report.precision or {}).get("sensitivity")
    if not sens or not sens.get("rows"):
        return ""
    head = ["rank", "graph", "kind", "layer / tensor", "op", "SQNR dB", "cosine", "output SQNR dB", "steps",
            "drop, only it INT8", "gain, only it float"]
    rows = [[r["rank"], escape(r.get("role", "")), r["kind"], f"<code>{escape(r['name'])}</code>", escape(r["op_type"]),
             f"{r['sqnr_db']:.1f}", f"{r['cosine']:.5f}", f"{r['output_sqnr_db']:.1f}", _num(r.get("steps")),
             _num(r.get("int8_only_drop")), _num(r.get("float_only_gain"))] for r in sens["rows"]]
    numeric = (0, 5, 6, 7, 8, 9, 10)
    shown = _table(head, rows[:SENSITIVITY_ROWS], numeric=numeric)
    rest = (f"<details><summary>all {len(rows)} units</summary>{_table(head, rows, numeric=numeric)}</details>"
            if len(rows) > SENSITIVITY_ROWS else "")
    caption = (f"<p>Each layer, and each quantized activation tensor, measured on its own: only it INT8 (SQNR "
               f"and cosine of its tensor, SQNR at the outputs, metric drop) and only it float (metric won back "
               f"against full INT8), in points of {escape(str(sens.get('metric', '')))} "
               f"({escape(str(sens.get('mode', '')))}); <i>steps</i>: INT8 codes its values use per channel. "
               f"Source: {escape(str(sens.get('source', '')))}. Most sensitive first.</p>")
    return _section("Per-layer sensitivity", caption + _img(sensitivity_png(sens["rows"]), "sensitivity ranking")
                    + shown + rest)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def sensitivity_png(rows: Sequence[Mapping[str, Any]], top: int = PLOT_ROWS) -> bytes:
    """Horizontal bars of the most sensitive units: metric effect (points) and output SQNR (dB)."""
    from matplotlib.figure import Figure

    rows = list(rows[:top])
    names = [f"{r['name'][-38:]} ({r['kind'][0]})" for r in rows][::-1]
    effect = [max(r.get("int8_only_drop") or 0.0, r.get("float_only_gain") or 0.0) for r in rows][::-1]
    sqnr = [r["output_sqnr_db"] for r in rows][::-1]
    figure = Figure(figsize=(10, 0.32 * len(rows) + 1.4), dpi=100)
    left, right = figure.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1, 1]})
    left.barh(range(len(rows)), effect, color="#CF222E")
    left.set_title("metric effect (pt, larger = more sensitive)", fontsize=10, loc="left")
    right.barh(range(len(rows)), sqnr, color="#5B7DB1")
    right.set_title("output SQNR, only it INT8 (dB)", fontsize=10, loc="left")
    left.set_yticks(range(len(rows)), names, fontsize=7)
    for ax in (left, right):
        ax.spines[["top", "right"]].set_visible(False)
        ax.tick_params(labelsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
