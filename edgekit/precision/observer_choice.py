"""``--observer auto``: calibrate with each candidate observer, keep the one that loses least on the evaluation split.

No observer wins everywhere on the trained fixtures (docs/benchmarks/calib_vs_peers.md): ``mse``
lost BiSeNet 2.5 mIoU points where ``entropy`` lost 0.6, and ``entropy`` lost MobileNetV2 5
top-1 points (its KL argmin clipped a ReLU6 output) where ``mse`` lost none. ``auto`` runs the
whole calibration (repairs included) once per candidate, scores each full-INT8 pipeline on the
evaluation split with the scorer the mixed-precision search uses (labelled metric, or agreement
with fp32 on unlabelled photos), and keeps the smaller drop; a tie keeps the first candidate
(``mse``, the default). The choice is made on the same split the report then measures, so the
reported drop is the better of two tries on it, not a fresh estimate; the record says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from edgekit.errors import ExportError

if TYPE_CHECKING:
    from edgekit.inputspec import InputSpec
    from edgekit.quantize import CalibrationSettings, QuantizedGraphs
    from edgekit.splits import DataSplit

AUTO_OBSERVER = "auto"
CANDIDATES: tuple[str, ...] = ("mse", "entropy")
NEEDS_EVALUATION = ("--observer auto picks the observer with the smaller drop on evaluation images; pass --eval-data "
                    "DIR (the --calib-data folder itself is split when it is the same folder).")


def quantize_best_observer(plan: Any, spec: InputSpec, split: DataSplit, settings: CalibrationSettings, task: str,
                           labels: Sequence[str] = ()) -> QuantizedGraphs:
    """The calibration (``edgekit.quantize.quantize_graphs``) of the candidate observer with the smallest drop.

    Args:
        plan: the export's GraphPlan (fp32 graphs, post-processing, class count).
        spec: the bundle's input spec.
        split: calibration samples and the evaluation split (required).
        settings: calibration settings; their observer is replaced by each candidate.
        task: ``classify``, ``segment`` or ``detect``.
        labels: class names for the manifest the scorer runs.

    Returns:
        The chosen calibration, its ``calibration`` record holding ``observer_choice``: each
        candidate's drop, the one chosen and how it was scored.
    """
    from edgekit.precision.scoring import GraphScorer, pipeline_manifest
    from edgekit.precision.workflow import PipelineQuant
    from edgekit.quantize import quantize_graphs

    if split.evaluation is None:
        raise ExportError(NEEDS_EVALUATION)
    scorer = None
    tried: list[dict[str, Any]] = []
    best: tuple[QuantizedGraphs, float] | None = None
    for observer in CANDIDATES:
        quantized = quantize_graphs(plan.graphs, spec, plan.postprocess, split, replace(settings, observer=observer))
        if scorer is None:  # the references are the same for every observer (equalization does not look at data)
            manifest = pipeline_manifest(task, spec, plan.postprocess, quantized.references,
                                         num_classes=plan.num_classes, labels=labels)
            profile = next(iter(quantized.recipes.values())).profile
            scorer = GraphScorer(manifest, split.evaluation.open(), quantized.references,
                                 optimized=profile.startswith("ort-cpu"))
        full_int8 = PipelineQuant(quantized.graphs, quantized.references, quantized.recipes, {}).variant(frozenset())
        drop = scorer.drop(scorer.score(full_int8))
        tried.append({"observer": observer, "drop_pt": round(drop, 4)})
        if best is None or drop < best[1] - 1e-9:
            best = (quantized, drop)
    assert best is not None and scorer is not None
    chosen = best[0]
    chosen.calibration["observer_choice"] = {
        "requested": AUTO_OBSERVER, "chosen": chosen.calibration["observer"], "tried": tried,
        "scored_on": f"{len(scorer.samples)} evaluation images, {scorer.description}",
        "caveat": "chosen on the split the report measures: the reported drop is the better of the tries",
    }
    return chosen


def choice_note(calibration: dict[str, Any]) -> list[str]:
    """The report's line about an ``--observer auto`` choice (none when a fixed observer was asked for)."""
    choice = calibration.get("observer_choice")
    if not choice:
        return []
    tries = ", ".join(f"{t['observer']} {t['drop_pt']:+.2f} pt" for t in choice["tried"])
    return [f"--observer auto chose {choice['chosen']} (full-INT8 drop on {choice['scored_on']}: {tries}); "
            f"{choice['caveat']}."]
