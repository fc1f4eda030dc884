"""``edgekit sensitivity BUNDLE --calib-data D --eval-data E``: rank a quantized bundle's layers by sensitivity.

From the bundle alone plus the data: its recipes (``recipe.json``) and fp32 reference graphs
(``<role>.fp32.onnx``). Bias correction is redone on the calibration samples the bundle was
calibrated on (the same seeded split of ``D``, checked against the recorded data hash), so
every measured variant is the graph export would write. Each unit (layer, and quantized
activation tensor) is measured on its own (:func:`edgekit.precision.workflow.pipeline_sensitivity`);
the ranking goes to ``sensitivity.json`` and ``sensitivity.png`` in the bundle, and the report
is rebuilt with it (ranked table and plot).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from edgekit.errors import CalibrationDataError

SENSITIVITY_VERSION = 1


@dataclass(frozen=True)
class SensitivityResult:
    """What ``edgekit sensitivity`` measured.

    Args:
        bundle: the bundle.
        mode: ``labelled`` or ``label-free``.
        metric: the metric the effects are points of.
        drop_int8: the bundle's recipes' drop on the evaluation images (points).
        rows: the ranking, most sensitive first (JSON rows, with ``role``).
        seconds: wall time.
    """

    bundle: Path
    mode: str
    metric: str
    drop_int8: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def analyze_bundle(bundle: str | Path, calib_data: str | Path, eval_data: str | Path, *,
                   images: int | None = None, report: bool = True) -> SensitivityResult:
    """Per-layer sensitivity of a quantized bundle; writes ``sensitivity.json``/``.png`` and rebuilds the report.

    Args:
        bundle: a bundle written by an INT8 target.
        calib_data: the calibration folder it was exported with (bias correction is redone on it).
        eval_data: evaluation images disjoint from calibration (labelled, or plain photos for
            agreement with fp32); the calibration folder itself is split as at export.
        images: score metric effects on at most this many evaluation images (default: all).
        report: rebuild ``report.json``/``.html``/``.png`` with the ranking.

    Raises:
        BundleError: not a quantized bundle.
        CalibrationDataError: ``calib_data`` is not the data the bundle was calibrated on.
    """
    from edgekit.bundle import verify
    from edgekit.precision.scoring import GraphScorer
    from edgekit.precision.workflow import PipelineQuant, pipeline_sensitivity, probe_feeds
    from edgekit.quantize import read_recipe_file, reference_role
    from edgekit.report.precision import SENSITIVITY_JSON, SENSITIVITY_PNG, sensitivity_png
    from edgekit.splits import recorded_split

    start = time.perf_counter()
    bundle = Path(bundle)
    manifest = verify(bundle)
    recipes, calibration = read_recipe_file(bundle)
    references = {role: onnx.load(bundle / manifest.graph(reference_role(role)).path) for role in recipes}
    graphs = _corrected_graphs(references, recipes, calibration, calib_data, manifest)
    evaluation = recorded_split(eval_data, calibration)
    scorer = GraphScorer(manifest, evaluation.open(), references,
                         optimized=next(iter(recipes.values())).profile.startswith("ort-cpu"))
    if images is not None:
        scorer = scorer.subset(images)
    feeds = probe_feeds(scorer.samples, manifest.input, graphs, references, manifest.postprocess)
    quant = PipelineQuant(graphs, references, recipes, feeds)
    drop_int8 = scorer.drop(scorer.score(quant.variant(frozenset())))
    rows = [{"role": role, **r.to_dict()} for role, r in pipeline_sensitivity(quant, scorer)]
    result = SensitivityResult(bundle, scorer.mode, scorer.key, drop_int8, rows,
                               round(time.perf_counter() - start, 3))
    body = {"version": SENSITIVITY_VERSION, "mode": result.mode, "mode_description": scorer.description,
            "metric": result.metric, "baseline": scorer.baseline.value, "drop_int8": drop_int8,
            "images": len(scorer.samples), "evaluation": evaluation.to_dict(), "seconds": result.seconds,
            "rows": rows}
    (bundle / SENSITIVITY_JSON).write_text(json.dumps(body, indent=1) + "\n")
    (bundle / SENSITIVITY_PNG).write_bytes(sensitivity_png(rows))
    if report:
        from edgekit.report import regenerate

        regenerate(bundle, eval_data=eval_data)
    return result


def _corrected_graphs(references: dict[str, onnx.ModelProto], recipes: dict[str, Any], calibration: dict[str, Any],
                      calib_data: str | Path, manifest: Any) -> dict[str, onnx.ModelProto]:
    """The graphs the recipes apply to: the references, bias-corrected on the bundle's calibration samples."""
    if not any("bias_correction" in r.provenance.repairs for r in recipes.values()):
        return dict(references)
    from edgekit.calib.bias_correction import correct_bias
    from edgekit.calib.datahash import hash_files
    from edgekit.data import Preprocess
    from edgekit.quantize import ImageFeeds, role_feeds
    from edgekit.splits import split_data

    split = split_data(calib_data, None, int(calibration.get("requested_samples") or calibration.get("samples", 1)))
    spec = manifest.input
    batch = spec.shape[0] if isinstance(spec.shape[0], int) else 1
    images = ImageFeeds(split.calibration, Preprocess.from_input_spec(spec), spec.name, batch)
    paths = [Path(sample.path) for sample in split.calibration]
    root = split.calib_root if split.calib_root.is_dir() else None
    if calibration.get("data_hash") and hash_files(paths, root=root) != calibration["data_hash"]:
        raise CalibrationDataError(
            f"--calib-data '{calib_data}' is not the data this bundle was calibrated on (its calibration samples "
            "hash differently from recipe.json's data_hash); pass the folder given to export --calib-data."
        )
    out: dict[str, onnx.ModelProto] = {}
    for role, reference in references.items():
        feeds = role_feeds(role, reference, images, references, manifest.postprocess)
        out[role] = correct_bias(reference, recipes[role], feeds)
    return out
