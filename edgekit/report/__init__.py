"""The accuracy-drop report of a quantized bundle: ``report.json``, ``report.html``, ``report.png``.

    from edgekit.report import ReportOptions, make_report
    from edgekit.splits import EvalSpec
    report = make_report("bundles/mnv2-int8", ReportOptions(evaluation=EvalSpec("data/val"), max_drop=1.0))
    report.verdict, report.drop   # "PASS", 0.4

``edgekit export --target onnx-int8 ...`` writes it after calibration; ``edgekit report BUNDLE``
measures it again (``regenerate``).
"""

from edgekit.report.report import (
    FAIL,
    NOT_EVALUATED,
    PASS,
    AccuracyBudgetError,
    Report,
    ReportOptions,
    build_report,
    make_report,
    read_report,
    regenerate,
    write_report,
)

__all__ = ["FAIL", "NOT_EVALUATED", "PASS", "AccuracyBudgetError", "Report", "ReportOptions", "build_report",
           "make_report", "read_report", "regenerate", "write_report"]
