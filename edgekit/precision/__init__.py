"""Mixed precision at the task level: scoring graphs on evaluation data, the export search, Precision Gating.

The graph-level pieces live in :mod:`edgekit.calib.sensitivity` (per-layer sensitivity) and
:mod:`edgekit.calib.mixed_precision` (the search); this package gives them a task metric
(:mod:`edgekit.precision.scoring`, labelled or agreement with fp32: :mod:`edgekit.precision.agreement`),
runs them for ``edgekit export --precision auto`` (:mod:`edgekit.precision.workflow`) and
``edgekit sensitivity`` (:mod:`edgekit.precision.bundle_sensitivity`), and holds the experimental
Precision Gating mode (:mod:`edgekit.precision.gating`).
"""
