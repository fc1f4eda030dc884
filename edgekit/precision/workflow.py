"""Mixed precision for a pipeline's graphs: sensitivity, the search, and what the bundle records of them.

``search_pipeline`` is what ``edgekit export --precision auto --max-drop X`` runs after
calibration: per-layer sensitivity of every quantized graph (:mod:`edgekit.calib.sensitivity`)
scored with the task metric on the evaluation split (:class:`~edgekit.precision.scoring.GraphScorer`,
labelled or agreement with fp32), then the search (:mod:`edgekit.calib.mixed_precision`) over
``(role, node)`` items, ranked across the pipeline's graphs. The recipes come back with the float
layers in ``layer_precision`` (FP16 where the target has FP16, else FP32), and a JSON record
(``recipe.json``'s ``calibration.mixed_precision``, read by the report) says which layers stay
float, the drop before and after, and the latency the float layers cost against full INT8.

Candidate graphs are the calibrated graphs quantized per a float set; a float layer takes back
its fp32 bias (bias correction compensates weight-quantization error that a float layer no
longer has), so each candidate is exactly what export would write for that set.
"""

from __future__ import annotations

import statistics
import time
from functools import partial
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np
import onnx

from edgekit.calib.mixed_precision import SearchResult, apply_float_set, search_float_set
from edgekit.calib.placement import node_id
from edgekit.calib.recipe import Precision, QuantRecipe
from edgekit.calib.sensitivity import (UnitSensitivity, analyze_sensitivity, float_variant, quantizable_units,
                                      restore_biases, sensitivity_key)
from edgekit.precision.scoring import GraphScorer

RECORD_VERSION = 1
PASS, FAIL = "PASS", "FAIL"
SENSITIVITY_IMAGES = 64  # metric effects per unit are measured on at most this many evaluation images
PROBE_FEEDS = 4  # tensor errors (SQNR, cosine, steps) are measured on this many images
LATENCY_RUNS = 20
Item = tuple[str, str]  # (role, node id)


@dataclass(frozen=True)
class PipelineQuant:
    """A calibrated pipeline: what the search varies.

    Args:
        graphs: role -> the fp32 graph its recipe applies to (bias-corrected where repairs ran).
        references: role -> the fp32 reference graph (before bias correction).
        recipes: role -> full-INT8 QuantRecipe.
        feeds: role -> a few feed dicts for tensor errors and timing.
    """

    graphs: Mapping[str, onnx.ModelProto]
    references: Mapping[str, onnx.ModelProto]
    recipes: Mapping[str, QuantRecipe]
    feeds: Mapping[str, Sequence[Mapping[str, np.ndarray]]]

    def variant(self, float_items: frozenset[Hashable], precision: Precision = Precision.FP32,
                only: str | None = None) -> dict[str, onnx.ModelProto]:
        """QDQ graphs with ``float_items`` float; ``only``: that role quantized, the others fp32 references."""
        out = {}
        for role, graph in self.graphs.items():
            if only is not None and role != only:
                out[role] = self.references[role]
                continue
            nodes = {item[1] for item in float_items if isinstance(item, tuple) and item[0] == role}
            out[role] = float_variant(graph, self.recipes[role], nodes, precision, reference=self.references[role])
        return out


def pipeline_sensitivity(quant: PipelineQuant, scorer: GraphScorer | None, *, isolate: bool = True,
                         precision: Precision = Precision.FP32) -> list[tuple[str, UnitSensitivity]]:
    """Every unit of every role, measured on its own and ranked across the pipeline (most sensitive first).

    ``isolate``: see :func:`edgekit.calib.sensitivity.analyze_sensitivity` (False: float-alone
    gains only, tensor errors from the full-INT8 graph; what the search needs, at half the cost).
    ``precision``: what a unit kept float runs at (FP16 is simulated by rounding).
    """
    full = quant.variant(frozenset())
    full_drop = scorer.drop(scorer.score(full)) if scorer is not None else None
    rows: list[tuple[str, UnitSensitivity]] = []
    for role, graph in quant.graphs.items():
        int8_only = float_only = None
        if scorer is not None:
            int8_only = partial(_drop_with, scorer, quant.references, role)
            float_only = partial(_drop_with, scorer, full, role)
        units = quantizable_units(graph, quant.recipes[role].profile)
        ranked = analyze_sensitivity(graph, quant.recipes[role], quant.feeds[role], reference=quant.references[role],
                                     units=units, precision=precision,
                                     int8_only_drop=int8_only, float_only_drop=float_only, full_int8_drop=full_drop,
                                     isolate=isolate)
        rows += [(role, r) for r in ranked]
    ordered = sorted(rows, key=lambda pair: sensitivity_key(pair[1]))
    return [(role, replace(r, rank=i + 1)) for i, (role, r) in enumerate(ordered)]


def _drop_with(scorer: GraphScorer, base: Mapping[str, onnx.ModelProto], role: str,
               variant: onnx.ModelProto) -> float:
    """The drop of ``base`` with ``role``'s graph replaced by ``variant``."""
    return scorer.drop(scorer.score({**base, role: variant}))


def search_pipeline(quant: PipelineQuant, scorer: GraphScorer, budget: float, precision: Precision, *,
                    sensitivity_scorer: GraphScorer | None = None,
                    progress: Callable[[str], None] | None = None) -> tuple[dict[str, QuantRecipe], dict[str, Any]]:
    """The fewest float layers within ``budget`` points: the recipes with them, and the record for the bundle.

    Args:
        quant: the calibrated pipeline.
        scorer: scores candidates on the evaluation split (the budget's metric).
        budget: the largest acceptable drop in points.
        precision: what float layers run at (FP16, or FP32 where the target has no FP16).
        sensitivity_scorer: scores the per-unit metric effects (default: ``scorer``).
        progress: called with a line per stage.
    """
    say = progress or (lambda _: None)
    start = time.perf_counter()
    requested = precision
    result, rows, precision = _search_at(quant, scorer, sensitivity_scorer or scorer, budget, precision, say)
    if not result.passed and precision is Precision.FP16:
        # Some tensor needs more than fp16 keeps (a small signal on a large offset): try fp32 layers.
        say("fp16 float layers miss the budget; searching again with fp32 ones")
        result, rows, precision = _search_at(quant, scorer, sensitivity_scorer or scorer, budget, Precision.FP32, say)
    sensitivity_s = time.perf_counter() - start - result.seconds
    items = [item for item in result.float_items if isinstance(item, tuple)]
    recipes = {}
    for role, recipe in quant.recipes.items():
        nodes = [n for r, n in items if r == role]
        recipes[role] = apply_float_set(quant.graphs[role], recipe, nodes, precision) if nodes else recipe
    latency = compare_latency(quant, frozenset(items), optimized=scorer.optimized, precision=precision)
    record = search_record(quant, scorer, result, rows, precision, latency,
                           sensitivity_s=round(sensitivity_s, 3))
    record["float_precision_target"] = requested.value  # fp16 targets fall back to fp32 layers when fp16 fails
    return recipes, record


def _search_at(quant: PipelineQuant, scorer: GraphScorer, sensitivity_scorer: GraphScorer, budget: float,
               precision: Precision, say: Callable[[str], None]
               ) -> tuple[SearchResult, list[tuple[str, UnitSensitivity]], Precision]:
    """Rank the units and search, float layers at ``precision``; full INT8 within budget ranks nothing."""
    measured: dict[frozenset[Hashable], float] = {}

    def drop_of(items: frozenset[Hashable]) -> float:
        if items not in measured:
            measured[items] = scorer.drop(scorer.score(quant.variant(items, precision)))
        return measured[items]

    rows: list[tuple[str, UnitSensitivity]] = []
    if drop_of(frozenset()) > budget:
        say("per-layer sensitivity")
        rows = pipeline_sensitivity(quant, sensitivity_scorer, isolate=False, precision=precision)
    say(f"searching for the fewest float layers within {budget:.2f} pt")
    ranked = [frozenset((role, n) for n in r.nodes) for role, r in rows]
    return search_float_set(ranked, drop_of, budget), rows, precision


def mixed_graphs(quant: PipelineQuant, recipes: Mapping[str, QuantRecipe]) -> dict[str, onnx.ModelProto]:
    """The fp32 graphs the mixed recipes apply to: float layers with their fp32 biases back."""
    return {role: restore_biases(graph, quant.references[role],
                                 {n for n, p in recipes[role].layer_precision.items() if p is not Precision.INT8})
            for role, graph in quant.graphs.items()}


def compare_latency(quant: PipelineQuant, float_items: frozenset[Hashable], *, optimized: bool,
                    runs: int = LATENCY_RUNS, precision: Precision = Precision.FP32) -> dict[str, Any]:
    """Median latency (ms, summed over roles) of full INT8 and of the mixed graphs on onnxruntime, interleaved."""
    from edgekit.precision.scoring import OrtGraph

    # fp16 layers time as fp32 here: the rounding casts of the simulation are not what a device runs
    variants = {"int8": quant.variant(frozenset()), "mixed": quant.variant(float_items, Precision.FP32)}
    times: dict[str, list[float]] = {"int8": [], "mixed": []}
    for role in quant.graphs:
        feed = quant.feeds[role][0]
        sessions = {k: OrtGraph(v[role], optimized=optimized) for k, v in variants.items()}
        samples: dict[str, list[float]] = {k: [] for k in sessions}
        for i in range(runs + 2):
            for name in (("int8", "mixed") if i % 2 == 0 else ("mixed", "int8")):
                t0 = time.perf_counter()
                sessions[name].run(feed)
                if i >= 2:  # two warm-up rounds
                    samples[name].append((time.perf_counter() - t0) * 1e3)
        for name in times:
            times[name].append(statistics.median(samples[name]))
    int8_ms, mixed_ms = sum(times["int8"]), sum(times["mixed"])
    return {"backend": "onnxruntime", "optimized": optimized, "threads": 1, "runs": runs,
            "int8_ms": round(int8_ms, 4), "mixed_ms": round(mixed_ms, 4), "cost_ms": round(mixed_ms - int8_ms, 4),
            "cost_pct": round(100.0 * (mixed_ms - int8_ms) / int8_ms, 2) if int8_ms > 0 else None}


def search_record(quant: PipelineQuant, scorer: GraphScorer, result: SearchResult,
                  rows: Sequence[tuple[str, UnitSensitivity]], precision: Precision, latency: Mapping[str, Any],
                  *, sensitivity_s: float) -> dict[str, Any]:
    """The JSON record of one search (``recipe.json``'s ``calibration.mixed_precision``)."""
    ops = {(role, node_id(n, i)): n.op_type for role, g in quant.graphs.items() for i, n in enumerate(g.graph.node)}
    layers = sum(1 for role, g in quant.graphs.items()
                 for u in quantizable_units(g, quant.recipes[role].profile) if u.kind == "layer")
    floats = [{"role": role, "node": node, "op_type": ops.get((role, node), ""), "precision": precision.value}
              for role, node in result.float_items]
    return {
        "version": RECORD_VERSION, "budget": result.budget, "mode": scorer.mode, "mode_description": scorer.description,
        "metric": scorer.key, "baseline": scorer.baseline.value, "images": len(scorer.samples),
        "scored_with": "onnxruntime " + ("(full optimizations: integer kernels)" if scorer.optimized
                                        else "(basic optimizations: Q/DQ as the ONNX spec defines them)"),
        "drop_int8": result.drop_int8, "drop": result.drop, "verdict": PASS if result.passed else FAIL,
        "float_precision": precision.value, "float_layers": floats, "float_count": len(floats),
        "quantizable_layers": layers, "evaluations": result.evaluations,
        "trials": [t.__dict__ for t in result.trials], "search_seconds": result.seconds,
        "sensitivity_seconds": sensitivity_s, "latency": dict(latency),
        "sensitivity": [{"role": role, **r.to_dict()} for role, r in rows],
    }


def float_precision(target: Any) -> Precision:
    """What a target runs float layers at: its non-INT8 precision (FP16 for TensorRT, FP32 for CPU targets)."""
    values = [getattr(p, "value", p) for p in target.precisions]
    return Precision(next((v for v in values if v != Precision.INT8.value), Precision.FP32.value))


def probe_feeds(samples: Sequence[Any], spec: Any, roles: Mapping[str, onnx.ModelProto],
                references: Mapping[str, onnx.ModelProto], postprocess: Any) -> dict[str, list[dict[str, np.ndarray]]]:
    """A few feeds per role from evaluation samples: images, or what the fp32 stage 1 and the glue make of them."""
    from edgekit.data import Preprocess
    from edgekit.quantize import ImageFeeds, role_feeds

    batch = spec.shape[0] if isinstance(spec.shape[0], int) else 1
    # any sized iterable of samples with .image and .path will do (the report passes a list too)
    images = ImageFeeds(cast(Any, list(samples[:PROBE_FEEDS])), Preprocess.from_input_spec(spec), spec.name, batch)
    return {role: list(role_feeds(role, graph, images, references, postprocess)) for role, graph in roles.items()}


def search_export(quantized: Any, task: str, plan: Any, spec: Any, target: Any, evaluation: Any, budget: float,
                  labels: Sequence[str] = ()) -> dict[str, Any]:
    """``edgekit export --precision auto``: replace ``quantized``'s recipes and graphs with the searched ones.

    Args:
        quantized: :class:`edgekit.quantize.QuantizedGraphs` (changed in place: recipes, graphs,
            and ``calibration["mixed_precision"]``, the record).
        task: ``classify``, ``segment`` or ``detect``.
        plan: the export's GraphPlan (task post-processing, class count).
        spec: the bundle's input spec.
        target: the target's TargetSpec (its float precision).
        evaluation: the evaluation split (``EvalSpec``).
        budget: ``--max-drop`` in points.
        labels: class names for the manifest.

    Returns:
        The record.
    """
    from edgekit.precision.scoring import pipeline_manifest

    dataset = evaluation.open()
    profile = next(iter(quantized.recipes.values())).profile
    manifest = pipeline_manifest(task, spec, plan.postprocess, quantized.references, num_classes=plan.num_classes,
                                 labels=labels)
    scorer = GraphScorer(manifest, dataset, quantized.references, optimized=profile.startswith("ort-cpu"))
    feeds = probe_feeds(scorer.samples, spec, quantized.graphs, quantized.references, plan.postprocess)
    quant = PipelineQuant(quantized.graphs, quantized.references, quantized.recipes, feeds)
    recipes, record = search_pipeline(quant, scorer, budget, float_precision(target),
                                      sensitivity_scorer=scorer.subset(SENSITIVITY_IMAGES))
    quantized.graphs = mixed_graphs(quant, recipes)
    quantized.recipes = recipes
    quantized.calibration["mixed_precision"] = record
    return record

