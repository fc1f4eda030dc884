"""Calibration plumbing: calibration images -> streaming feeds per graph role -> repaired graphs + recipes.

What ``edgekit.export`` runs for a target with a ``quant_profile`` (``onnx-int8``...)::

    --calib-data D ──split_data──▶ calibration samples (seeded permutation, first N) │ evaluation split
    per graph role, in pipeline order:
      fp32 graph ──equalize_cross_layer──▶ reference (fp32-exact) ──calibrate──▶ QuantRecipe
                 ──correct_bias(recipe)──▶ the graph the target quantizes with the recipe

Feeds are re-iterable and stream one preprocessed image at a time. A two-stage detector's
``head`` is calibrated on what it sees on the board: for each calibration image the fp32
``stage1`` graph runs, then the SDK's numpy glue (:func:`edgekit.runtimes.twostage.proposals`,
``ps_roi_align``) pools the proposals into the head's input. The ``single`` detector graph
(RoiAlign + NonMaxSuppression in one graph) is not quantized: INT8 bundles hold the pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.data import ImageDataset, Preprocess
from edgekit.errors import BundleError, CalibrationDataError, ExportError
from edgekit.progress import track
from edgekit.splits import SPLIT_SEED, DataSplit, FileEntry, Subset, split_data

if TYPE_CHECKING:
    import onnx

    from edgekit.api import ExportOptions
    from edgekit.bundle import GraphFile, PostProcess
    from edgekit.exporters.registry import TargetSpec
    from edgekit.calib.recipe import QuantRecipe
    from edgekit.inputspec import InputSpec

RECIPE_NAME = "recipe.json"
RECIPE_FILE_VERSION = 1
REFERENCE_SUFFIX = ".fp32"  # role "model" -> reference role "model.fp32", file "model.fp32.onnx"

# Graph roles an INT8 bundle leaves out, and why (recipe.json and the report repeat it).
FLOAT_ONLY_ROLES: Mapping[str, str] = {
    "single": "the single-graph detector holds RoiAlign and NonMaxSuppression; an INT8 bundle carries the "
              "stage1 + head pipeline (its numpy glue stays float), so this graph is not written",
}
# Ops whose output range the op itself fixes. Their outputs are gates and probabilities whose
# rare large values carry the signal (an attention gate that is "on"); a clipping observer
# (entropy, percentile, mse) fitted to a histogram piled up near 0 cuts them off: on a DFANet-B
# the fc-attention Sigmoid got [0, 0.108] from the entropy observer, the gated features lost
# 90 % of their value and the next layers' SQNR fell to ~0 dB. Their full range costs nothing:
# 8 bits still resolve 1/255 of it.
BOUNDED_OUTPUTS: Mapping[str, tuple[float, float]] = {
    "Sigmoid": (0.0, 1.0), "HardSigmoid": (0.0, 1.0), "Softmax": (0.0, 1.0), "Tanh": (-1.0, 1.0),
}
# Role -> the role whose fp32 graph (plus the numpy glue) produces its input
# (edgekit.detector_export: stage1 -> proposals, PSRoI align -> head).
FED_BY: Mapping[str, str] = {"head": "stage1"}


# ---------------------------------------------------------------- feeds

Feed = dict[str, np.ndarray]


class ImageFeeds:
    """Re-iterable ``{input: [batch, 3, H, W]}`` feeds of a dataset, preprocessed as the bundle declares.

    A fixed batch ``N > 1`` groups ``N`` images per feed (the last group repeats its last
    image). ``paths`` lists the files the latest pass read.
    """

    def __init__(self, dataset: ImageDataset | Subset, preprocess: Preprocess, input_name: str,
                 batch: int = 1) -> None:
        self.dataset, self.preprocess, self.input_name, self.batch = dataset, preprocess, input_name, batch
        self.paths: list[Path] = []

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch)

    def __iter__(self) -> Iterator[Feed]:
        self.paths = []
        group: list[np.ndarray] = []
        for sample in self.dataset:
            self.paths.append(Path(sample.path))
            group.append(self.preprocess(sample.image)[0])
            if len(group) == self.batch:
                yield {self.input_name: np.concatenate(group)}
                group = []
        if group:
            group += [group[-1]] * (self.batch - len(group))
            yield {self.input_name: np.concatenate(group)}


class HeadFeeds:
    """Re-iterable head feeds: each image's proposals pooled from the fp32 ``stage1`` outputs.

    The glue is the SDK's own (:mod:`edgekit.runtimes.twostage`), so the head is calibrated
    on exactly what it reads on the board. Images without proposals give no feed.
    """

    def __init__(self, images: ImageFeeds, stage1: onnx.ModelProto, params: Mapping[str, Any],
                 head_input: str) -> None:
        from edgekit.runtimes.twostage import TwoStageParams

        self.images, self.stage1, self.head_input = images, stage1, head_input
        self.params = TwoStageParams.from_dict(params)

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[Feed]:
        run = stage1_runner(self.stage1)
        for feed in self.images:
            images = feed[self.images.input_name]
            pooled = pool_proposals(run(images), self.params, (int(images.shape[2]), int(images.shape[3])))
            if len(pooled):
                yield {self.head_input: pooled}


def stage1_runner(stage1: onnx.ModelProto) -> Callable[[np.ndarray], tuple[np.ndarray, ...]]:
    """Images -> (rpn_logits, rpn_deltas, features) with the fp32 stage-1 graph in onnxruntime."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(stage1.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    return lambda images: tuple(session.run(outputs, {name: images}))


def pool_proposals(stage1_outputs: Sequence[np.ndarray], params: Any, image_size: tuple[int, int]) -> np.ndarray:
    """The head's input ``[R, ps, p, p]`` for a batch: proposals, then PSRoI align (the SDK's glue)."""
    from edgekit.runtimes.twostage import proposals, ps_roi_align

    rpn_logits, rpn_deltas, features = stage1_outputs[:3]
    props = proposals(rpn_logits, rpn_deltas, params, image_size)
    rois = np.concatenate([np.concatenate((np.full((len(b), 1), i, np.float32), b), axis=1)
                           for i, b in enumerate(props)])
    return ps_roi_align(features, rois, params.pooled_size, params.spatial_scale, params.sampling_ratio,
                        params.aligned)


def role_feeds(role: str, graph: onnx.ModelProto, images: ImageFeeds, references: Mapping[str, onnx.ModelProto],
               postprocess: PostProcess) -> ImageFeeds | HeadFeeds:
    """The calibration feeds of one graph role: images, or what an earlier role and the glue make of them."""
    source = FED_BY.get(role)
    if source is None:
        return images
    if source not in references:
        raise CalibrationDataError(f"graph '{role}' is fed by graph '{source}', which was not calibrated before it.")
    return HeadFeeds(images, references[source], postprocess.params, graph.graph.input[0].name)


# ---------------------------------------------------------------- calibration

def calibration_split(target: TargetSpec, opts: ExportOptions) -> DataSplit | None:
    """The calibration samples and evaluation split of an INT8 target; None for a float target.

    Raises, before any model is built: CalibrationDataError when an INT8 target has no
    ``calib_data``; ExportError when a float target is given calibration options.
    """
    if target.quant_profile is None:
        given = [flag for flag, value in (("--calib-data", opts.calib_data), ("--eval-data", opts.eval_data),
                                          ("--strict", opts.strict), ("--precision auto", opts.precision == "auto"))
                 if value]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise ExportError(f"target '{target.name}' is not quantized: {', '.join(given)} {verb} only to INT8 "
                              "targets (onnx-int8); drop it or choose an INT8 target.")
        return None
    if opts.calib_data is None:
        raise CalibrationDataError(
            f"target '{target.name}' quantizes to INT8 and needs calibration images: pass --calib-data DIR (class "
            "folders, COCO JSON, VOC XML or image/mask folders; a few hundred images like the deployment data, "
            f"the first {opts.calib_samples} of a seeded shuffle are used)."
        )
    return split_data(opts.calib_data, opts.eval_data, opts.calib_samples)


@dataclass(frozen=True)
class CalibrationSettings:
    """How to calibrate (the calibration fields of ``ExportOptions``).

    Args:
        profile: backend profile (the target's ``quant_profile``; ``ort-cpu`` resolves by ISA).
        observer: ``mse``, ``entropy``, ``minmax`` or ``percentile``.
        percentile: the ``percentile`` observer's percentile.
        repairs: cross-layer equalization before calibration, bias correction after.
        progress: progress bars on the terminal.
    """

    profile: str
    observer: str = "mse"
    percentile: float = 99.99
    repairs: bool = True
    progress: bool = False


@dataclass
class QuantizedGraphs:
    """What calibration produced for an INT8 target.

    Args:
        graphs: role -> the fp32 graph the recipe applies to (equalized, bias-corrected).
        references: role -> the fp32 reference graph (equalized: the same function as the
            exported graph, calibrated on; the report compares INT8 against it).
        recipes: role -> QuantRecipe.
        calibration: the JSON record of the run (``recipe.json``'s ``calibration``).
        feeds: role -> re-iterable calibration feeds.
    """

    graphs: dict[str, onnx.ModelProto]
    references: dict[str, onnx.ModelProto]
    recipes: dict[str, QuantRecipe]
    calibration: dict[str, Any]
    feeds: dict[str, ImageFeeds | HeadFeeds]


def quantize_graphs(graphs: Mapping[str, onnx.ModelProto], spec: InputSpec, postprocess: PostProcess,
                    split: DataSplit, settings: CalibrationSettings) -> QuantizedGraphs:
    """Calibrate every quantizable role of a pipeline, in order; repairs as ``settings`` say.

    Raises:
        CalibrationDataError: no usable calibration sample, or feeds that do not fit a graph.
    """
    from edgekit.calib.bias_correction import bias_correction_report, correct_bias
    from edgekit.calib.calibrate import calibrate
    from edgekit.calib.datahash import hash_files
    from edgekit.calib.equalize import equalization_report, equalize_cross_layer
    from edgekit.calib.isa import detect_isa
    from edgekit.calib.profiles import resolve_profile

    batch = spec.shape[0] if isinstance(spec.shape[0], int) else 1
    images = ImageFeeds(split.calibration, Preprocess.from_input_spec(spec), spec.name, batch)
    out = QuantizedGraphs({}, {}, {}, {}, {})
    repairs: dict[str, dict[str, Any]] = {}
    bounded: dict[str, list[str]] = {}
    data_hash, files = "", []
    for role, graph in graphs.items():
        if role in FLOAT_ONLY_ROLES:
            continue
        reference = equalize_cross_layer(graph) if settings.repairs else graph
        feeds = role_feeds(role, graph, images, out.references, postprocess)
        # data_hash: a placeholder so calibrate() does not hash the feeds; the file hash replaces it
        recipe = calibrate(reference, feeds, observer=settings.observer, percentile=settings.percentile,
                           profile=settings.profile, data_hash="pending", progress=settings.progress)
        recipe, bounded[role] = bound_activation_ranges(reference, recipe)
        if not files:
            files = [FileEntry.of(p, split.calib_root) for p in images.paths]
            data_hash = hash_files(images.paths, root=split.calib_root if split.calib_root.is_dir() else None)
        corrected = reference
        if settings.repairs:
            corrected = correct_bias(reference, recipe,
                                     track(feeds, f"bias correction ({role})", enabled=settings.progress))
            repairs[role] = {"cross_layer_equalization": equalization_report(graph, reference).to_dict(),
                             "bias_correction": bias_correction_report(reference, corrected).to_dict()}
        done = ("cross_layer_equalization", "bias_correction") if settings.repairs else ()
        out.recipes[role] = recipe.replace(provenance=replace(recipe.provenance, data_hash=data_hash, repairs=done))
        out.graphs[role], out.references[role], out.feeds[role] = corrected, reference, feeds
    isa = detect_isa()
    profile = resolve_profile(settings.profile, isa)
    out.calibration = {
        "data": str(split.calib_root), "samples": len(files), "requested_samples": split.requested, "seed": SPLIT_SEED,
        "observer": settings.observer, "percentile": settings.percentile if settings.observer == "percentile" else None,
        "data_hash": data_hash, "profile_request": settings.profile, "profile": profile.name,
        "profile_reason": profile.reason or f"{profile.name}: fixed by the target", "cpu": isa.to_dict(),
        "cpu_description": isa.describe(), "repairs": repairs,
        "bounded_outputs": {role: names for role, names in bounded.items() if names},
        "float_only_roles": {r: FLOAT_ONLY_ROLES[r] for r in graphs if r in FLOAT_ONLY_ROLES},
        "files": [asdict(f) for f in files],
    }
    return out


def bound_activation_ranges(model: onnx.ModelProto, recipe: QuantRecipe) -> tuple[QuantRecipe, list[str]]:
    """The recipe with the outputs of bounded ops (``BOUNDED_OUTPUTS``) at their full range; the names changed.

    Scales are re-derived for the recipe's profile, shared-scale groups included.
    """
    from edgekit.calib.profiles import resolve_profile, tensor_quants
    from edgekit.calib.recipe import Precision, TensorKind

    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    ranges = {name: (min(t.rmin), max(t.rmax)) for name, t in recipe.tensors.items() if t.kind is TensorKind.ACTIVATION}
    changed = [name for name in ranges if producer.get(name) in BOUNDED_OUTPUTS
               and ranges[name] != BOUNDED_OUTPUTS[producer[name]]]
    if not changed:
        return recipe, []
    ranges.update({name: BOUNDED_OUTPUTS[producer[name]] for name in changed})
    keep_float = [node for node, p in recipe.layer_precision.items() if p != Precision.INT8]
    tensors = tensor_quants(model, ranges, resolve_profile(recipe.profile), keep_float=keep_float)
    return recipe.replace(tensors=tensors), changed


# ---------------------------------------------------------------- bundle files

def write_recipe_file(out_dir: str | Path, recipes: Mapping[str, QuantRecipe],
                      calibration: Mapping[str, Any]) -> Path:
    """Write ``recipe.json``: every role's QuantRecipe and the calibration record."""
    path = Path(out_dir) / RECIPE_NAME
    body = {"version": RECIPE_FILE_VERSION, "calibration": dict(calibration),
            "recipes": {role: recipe.to_dict() for role, recipe in recipes.items()}}
    path.write_text(json.dumps(body, indent=1) + "\n")
    return path


def read_recipe_file(bundle: str | Path) -> tuple[dict[str, QuantRecipe], dict[str, Any]]:
    """The recipes (role -> QuantRecipe) and the calibration record of a quantized bundle.

    Raises:
        BundleError: no ``recipe.json`` (not a quantized bundle) or an unreadable one.
    """
    from edgekit.calib.recipe import QuantRecipe

    path = Path(bundle) / RECIPE_NAME
    if not path.is_file():
        raise BundleError(f"'{bundle}' has no {RECIPE_NAME}: it is not a quantized bundle. Export one with "
                          "--target onnx-int8 --calib-data DIR.")
    try:
        body = json.loads(path.read_text())
        recipes = {role: QuantRecipe.from_dict(data) for role, data in body["recipes"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"'{path}' is not a valid recipe file: {exc}. Re-export the bundle.") from exc
    return recipes, dict(body.get("calibration", {}))


def reference_role(role: str) -> str:
    """The role of ``role``'s fp32 reference graph in the bundle (``model`` -> ``model.fp32``)."""
    return role + REFERENCE_SUFFIX


def write_references(references: Mapping[str, onnx.ModelProto], out_dir: str | Path) -> list[GraphFile]:
    """Save the fp32 reference graphs as ``<role>.fp32.onnx`` (checked, described for the manifest).

    They make the bundle its own accuracy reference: ``edgekit report BUNDLE`` re-evaluates
    fp32 against INT8 from the bundle alone, with no model source, weights or torch.
    """
    from edgekit.exporters.onnx import write_graphs
    from edgekit.exporters.registry import Precision

    return write_graphs({reference_role(r): g for r, g in references.items()}, Path(out_dir), Precision.FP32)
