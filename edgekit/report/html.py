"""``report.html``: one self-contained page (inline CSS, plots as base64 PNG), readable offline."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from html import escape
from typing import TYPE_CHECKING, Any

from edgekit.report.plots import VERDICT_COLOURS, metric_labels, metric_png, sqnr_png
from edgekit.report.precision import precision_sections

if TYPE_CHECKING:
    from edgekit.report.report import Report

LAYER_ROWS = 25  # rows of the per-layer table shown before "show all"

_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#F6F8FA;color:#24292F;font:14px/1.5 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:24px 28px 40px}
header{display:flex;align-items:center;justify-content:space-between;gap:16px;padding:20px 24px;background:#fff;
 border:1px solid #D0D7DE;border-radius:10px}
h1{margin:0;font-size:22px}
.sub{color:#57606A;margin-top:4px}
.badge{color:#fff;font-weight:700;font-size:18px;letter-spacing:.04em;padding:8px 18px;border-radius:8px;
 white-space:nowrap}
.cards{display:grid;grid-template-columns:repeat(3,1fr);gap:14px;margin:16px 0}
.card{background:#fff;border:1px solid #D0D7DE;border-radius:10px;padding:14px 18px}
.card .k{color:#57606A;font-size:12px;text-transform:uppercase;letter-spacing:.05em}
.card .v{font-size:24px;font-weight:600;margin:2px 0}
.card .d{color:#57606A;font-size:13px}
section{background:#fff;border:1px solid #D0D7DE;border-radius:10px;padding:16px 20px;margin:14px 0}
h2{font-size:16px;margin:0 0 10px}
.plots{display:grid;grid-template-columns:1fr 1.6fr;gap:14px;align-items:start}
.plots img{width:100%;height:auto;display:block}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:5px 10px;border-bottom:1px solid #EAEEF2;vertical-align:top}
th{background:#F6F8FA;font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#FBFCFD}
table.kv td:first-child{width:130px;white-space:nowrap;color:#57606A}
.bad{color:#CF222E;font-weight:600}
ul.notes{margin:0;padding-left:18px}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;background:#F6F8FA;padding:1px 4px;border-radius:4px}
details summary{cursor:pointer;color:#0969DA;margin-top:8px}
footer{color:#6E7781;font-size:12px;margin-top:18px}
"""


def render_html(report: Report) -> str:
    """The whole page."""
    colour = VERDICT_COLOURS.get(report.verdict, "#6E7781")
    title = f"INT8 accuracy-drop report — {report.model}"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body><main>",
        f'<header><div><h1>{escape(title)}</h1><div class="sub">{escape(report.task)} · target '
        f"<code>{escape(report.target)}</code> · bundle <code>{escape(report.bundle)}</code></div></div>"
        f'<div class="badge" style="background:{colour}">{escape(report.verdict)}</div></header>',
        _cards(report),
        _section("Notes", '<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in report.notes) + "</ul>")
        if report.notes else "",
        _section("Plots", '<div class="plots">' + _img(metric_png(report), "metric bars fp32 vs INT8")
                 + _img(sqnr_png(report), "per-layer SQNR") + "</div>"),
        _metrics_table(report), _latency_table(report), precision_sections(report), _calibration_table(report),
        _layers_table(report), _graphs_table(report),
        f"<footer>edgekit {escape(report.edgekit_version)} · {escape(report.created)} · report.json holds every "
        "number on this page.</footer></main></body></html>",
    ]
    return "\n".join(p for p in parts if p)


def _cards(report: Report) -> str:
    cards = []
    key, label = report.headline["key"], report.headline["label"]
    if report.metrics and report.drop is not None:
        fp32, int8 = 100 * report.metrics["fp32"][key], 100 * report.metrics["int8"][key]
        over = ' class="bad"' if report.drop > report.max_drop else ""
        cards.append(_card(label, f"{fp32:.2f} → {int8:.2f}",
                           f"<span{over}>drop {report.drop:+.2f} pt</span> · budget {report.max_drop:.2f} pt"))
    else:
        cards.append(_card(label, "not evaluated", "pass --eval-data to measure the drop"))
    if report.latency:
        lat = report.latency
        cards.append(_card("latency (median, graphs)", f"{lat['fp32_ms']:.2f} → {lat['int8_ms']:.2f} ms",
                           f"{lat['speedup']:.2f}x · {escape(lat['backend'])}, "
                           f"{lat['threads'] or 'default'} thread(s), {lat['runs']} runs interleaved"))
    cal = report.calibration
    cards.append(_card("CPU profile", escape(cal.get("profile", "-")), escape(cal.get("cpu_description", ""))))
    return '<div class="cards">' + "".join(cards) + "</div>"


def _card(key: str, value: str, detail: str) -> str:
    return (f'<div class="card"><div class="k">{escape(key)}</div><div class="v">{value}</div>'
            f'<div class="d">{detail}</div></div>')


def _metrics_table(report: Report) -> str:
    if not report.metrics:
        return ""
    labels = metric_labels(report)
    rows = []
    for key, label in labels.items():
        fp32, int8 = report.metrics["fp32"].get(key), report.metrics["int8"].get(key)
        if fp32 is None or int8 is None:
            continue
        rows.append([escape(label), f"{100 * fp32:.2f}", f"{100 * int8:.2f}", f"{100 * (fp32 - int8):+.2f}"])
    ev = report.evaluation or {}
    caption = (f"<p>{ev.get('images', '?')} images from <code>{escape(str(ev.get('data', '')))}</code> "
               f"({escape(str(ev.get('description', '')))}), run on {escape(str(ev.get('backend', '')))}.</p>")
    table = _table(["metric", "fp32", "INT8", "drop (pt)"], rows, numeric=(1, 2, 3))
    return _section("Accuracy (percent)", caption + table)


def _latency_table(report: Report) -> str:
    lat = report.latency
    if not lat:
        return ""
    rows = [["graphs only", f"{lat['fp32_ms']:.3f}", f"{lat['int8_ms']:.3f}", f"{lat['speedup']:.2f}x"],
            ["end to end (pre, glue, post)", f"{lat['fp32_total_ms']:.3f}", f"{lat['int8_total_ms']:.3f}",
             f"{lat['fp32_total_ms'] / lat['int8_total_ms']:.2f}x" if lat["int8_total_ms"] else "-"]]
    convs = "".join(f"<li><code>{escape(r)}</code>: {c['integer']} of {c['total']} convolutions run as integer "
                    "kernels in onnxruntime</li>" for r, c in report.integer_convs.items() if c["total"])
    return _section("Latency (ms, median)", _table(["", "fp32", "INT8", "speed-up"], rows, numeric=(1, 2, 3))
                    + (f'<ul class="notes" style="margin-top:8px">{convs}</ul>' if convs else ""))


def _calibration_table(report: Report) -> str:
    cal = report.calibration
    repairs = cal.get("repairs") or {}
    repair_text = "; ".join(f"{role}: " + ", ".join(f"{name.replace('_', ' ')} ({info.get('description', '')})"
                                                    for name, info in done.items()) for role, done in repairs.items())
    bounded = "; ".join(f"{role}: {len(names)} Sigmoid/Tanh/Softmax output(s) kept at the op's range"
                        for role, names in (cal.get("bounded_outputs") or {}).items())
    percentile = f" ({cal['percentile']})" if cal.get("percentile") else ""
    cpu = f"{(cal.get('cpu') or {}).get('model_name', '')} {cal.get('cpu_description', '')}"
    rows = [
        ["observer", escape(str(cal.get("observer", ""))) + percentile],
        ["samples", f"{cal.get('samples', '?')} images from <code>{escape(str(cal.get('data', '')))}</code>"],
        ["data hash", f"<code>{escape(str(cal.get('data_hash', ''))[:16])}…</code>"],
        ["profile", f"<code>{escape(str(cal.get('profile', '')))}</code> "
                    f"(asked: {escape(str(cal.get('profile_request', '')))})"],
        ["why", escape(str(cal.get("profile_reason", "")))],
        ["CPU", escape(cpu)],
        ["repairs", escape(repair_text or "none")],
        ["full-range outputs", escape(bounded or "none")],
    ]
    return _section("Calibration", _table(["", ""], rows, header=False, css="kv"))


def _layers_table(report: Report) -> str:
    if not report.layers:
        return ""
    head = ["graph", "layer", "op", "SQNR dB", "cosine", "max abs err"]
    rows = [[escape(e["role"]), f"<code>{escape(e['layer'])}</code>", escape(e["op_type"]),
             f'<span class="bad">{e["sqnr_db"]:.1f}</span>' if e["sqnr_db"] < 20 else f"{e['sqnr_db']:.1f}",
             f"{e['cosine']:.5f}", f"{e['max_abs_err']:.4g}"] for e in report.layers]
    shown = _table(head, rows[:LAYER_ROWS], numeric=(3, 4, 5))
    rest = (f"<details><summary>all {len(rows)} layers</summary>{_table(head, rows, numeric=(3, 4, 5))}</details>"
            if len(rows) > LAYER_ROWS else "")
    caption = f"<p>Worst first, measured on {escape(report.layer_images)}; errors accumulate from the input.</p>"
    return _section("Per-layer error", caption + shown + rest)


def _graphs_table(report: Report) -> str:
    rows = [[f"<code>{escape(g['role'])}</code>", f"<code>{escape(g['path'])}</code>", escape(g["precision"]),
             f"{g['size_bytes'] / 1e6:.2f}"] for g in report.graphs]
    return _section("Bundle files", _table(["role", "file", "precision", "MB"], rows, numeric=(3,)))


def _section(title: str, body: str) -> str:
    return f"<section><h2>{escape(title)}</h2>{body}</section>"


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric: Sequence[int] = (),
           header: bool = True, css: str = "") -> str:
    def cell(tag: str, i: int, value: Any) -> str:
        return f'<{tag} class="n">{value}</{tag}>' if i in numeric else f"<{tag}>{value}</{tag}>"

    thead = "<tr>" + "".join(cell("th", i, escape(h)) for i, h in enumerate(head)) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f'<table class="{css}">{thead}{body}</table>' if css else f"<table>{thead}{body}</table>"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
