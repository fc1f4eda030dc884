"""edgekit's mixed-precision search next to NNCF's ``quantize_with_accuracy_control``, same model, data and budget.

The case: the trained ShuffleNetV2-1.0 fixture (96x96, 6 shape classes) with activation outliers
planted in one layer by an exact rewrite (``plant_outliers``: channels of a depthwise conv's
output scaled up, the pointwise conv reading them scaled down by as much, so the fp32 function
is unchanged). One INT8 scale over that ReLU's output then crushes
its other channels: full INT8 breaks the budget.

Both tools start from the same optimized fp32 ONNX (edgekit's export, cross-layer equalization
off: NNCF has none, and it would undo the outliers), the same calibration images (synthetic,
seed 3301) and the same evaluation images (300 synthetic shapes, seed 3302, top-1: a 0.33 pt grain):

- edgekit: ``edgekit.export(..., target="openvino-int8", precision="auto", max_drop=X)`` (the
  ``openvino`` profile is NNCF's placement); float layers from the recipe's ``layer_precision``;
- NNCF: ``nncf.quantize_with_accuracy_control`` on the OpenVINO model of that ONNX (its main
  backend), ``max_drop=X/100`` absolute, defaults otherwise; float layers are the convolutions
  and MatMuls whose weights it left without a FakeQuantize.

Each tool's result is then scored by the same runtime pipeline (OpenVINO CPU plugin, 1 thread).
Writes docs/benchmarks/mixed_precision.json and .md.

    python benchmarks/mixed_precision_vs_nncf.py [--max-drop 1.0] [--calib 100]
    python benchmarks/mixed_precision_vs_nncf.py --render
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "edgekit" / "fixtures" / "shufflenetv2-1.0.safetensors"
EVAL_SEED, EVAL_IMAGES = 3302, 300
OUT = ROOT / "docs" / "benchmarks" / "mixed_precision"
PLANT_BLOCK, PLANT_CHANNELS, PLANT_SCALE = "stage2.0.branch2", (0, 1, 2, 3), 300.0
CALIB_SEED = 3301


def plant_outliers(model: Any) -> Any:
    """Scale channels of a depthwise conv's output by PLANT_SCALE, undone by the 1x1 conv reading it (exact in fp32).

    The planted tensor is the input of a regular (pointwise) convolution: NNCF quantizes the
    input of a depthwise convolution per channel on CPU, which would absorb outliers planted there.
    """
    import torch

    branch = model.get_submodule(PLANT_BLOCK)
    bn, pointwise = branch[4], branch[5]  # BN after the depthwise conv (no ReLU), the 1x1 conv after it
    with torch.no_grad():
        for c in PLANT_CHANNELS:
            bn.weight[c] *= PLANT_SCALE
            bn.bias[c] *= PLANT_SCALE
            pointwise.weight[:, c] /= PLANT_SCALE
    return model


def planted_weights(work: Path) -> Path:
    """The fixture's weights with outliers planted, saved with its card beside them."""
    from safetensors.torch import save_file

    from edgekit.models import get_spec
    from edgekit.models.weights import load_weights

    model = get_spec("shufflenetv2-1.0").build(num_classes=6)
    load_weights(model, FIXTURE)
    plant_outliers(model.eval())
    out = work / "planted" / "shufflenetv2-1.0.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    shutil.copy(FIXTURE.with_suffix(".json"), out.with_suffix(".json"))
    return out


def float_weighted_layers_ov(model: Any) -> list[str]:
    """Convolutions / MatMuls of an NNCF-quantized OpenVINO model whose weights are not quantized.

    A quantized weight is a FakeQuantize on a constant, or (NNCF compresses them at the end) an
    int8/uint8 constant behind Convert -> Subtract -> Multiply.
    """
    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("Convolution", "GroupConvolution", "MatMul"):
            continue
        weight = op.input_value(1).get_node()
        while weight.get_type_name() in ("Convert", "Reshape", "Multiply", "Subtract") and weight.get_input_size():
            weight = weight.input_value(0).get_node()
        integer = weight.get_type_name() == "Constant" and weight.get_element_type().get_type_name() in ("i8", "u8")
        if weight.get_type_name() != "FakeQuantize" and not integer:
            out.append(op.get_friendly_name())
    return out


def evaluate_ov(model: Any, feeds: list[np.ndarray], labels: list[int], config: dict[str, str] | None = None) -> float:
    """Top-1 of an OpenVINO model on preprocessed inputs (CPU plugin, one thread)."""
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 1, **(config or {})})
    hits = [int(np.argmax(compiled(x)[compiled.outputs[0]]) == y) for x, y in zip(feeds, labels)]
    return float(np.mean(hits))


def run(max_drop: float, calib_images: int, work: Path) -> dict[str, Any]:
    import nncf
    import openvino as ov

    import edgekit
    from edgekit.data import Preprocess, open_dataset, synthesize
    from edgekit.quantize import ImageFeeds, read_recipe_file
    from edgekit.splits import split_data

    weights = planted_weights(work)
    calib = synthesize("cls", calib_images, CALIB_SEED, work / "calib", imgsz=96, overwrite=True)
    evaluation_dir = synthesize("cls", EVAL_IMAGES, EVAL_SEED, work / "eval", imgsz=96, overwrite=True)
    common = dict(weights=weights, calib_data=calib, calib_samples=calib_images, eval_data=evaluation_dir,
                  max_drop=max_drop, repairs=False)
    start = time.perf_counter()
    int8 = edgekit.export("shufflenetv2-1.0", out=work / "int8", target="openvino-int8", **common)
    int8_s = time.perf_counter() - start
    start = time.perf_counter()
    mixed = edgekit.export("shufflenetv2-1.0", out=work / "auto", target="openvino-int8", precision="auto", **common)
    auto_s = time.perf_counter() - start
    recipes, calibration = read_recipe_file(work / "auto")
    record = calibration["mixed_precision"]
    ops = {f["node"]: f["op_type"] for f in record["float_layers"]}
    edgekit_weighted = sorted(n for n, op in ops.items() if op in ("Conv", "Gemm", "MatMul"))

    # NNCF on the very same fp32 graph (the bundle's reference) and the same preprocessed images.
    spec = int8.manifest.input
    pre = Preprocess.from_input_spec(spec)
    split = split_data(calib, None, calib_images)
    calib_feeds = [feed[spec.name] for feed in ImageFeeds(split.calibration, pre, spec.name)]
    evaluation = list(open_dataset(evaluation_dir))
    eval_feeds = [pre(s.image)[0] for s in evaluation]
    labels = [s.label for s in evaluation]
    fp32_model = ov.convert_model(str(work / "auto" / "model.fp32.onnx"))

    def validate(compiled: Any, data: Any) -> float:
        output = compiled.outputs[0]
        return float(np.mean([int(np.argmax(compiled(x)[output]) == y) for x, y in data]))

    start = time.perf_counter()
    nncf_model = nncf.quantize_with_accuracy_control(
        fp32_model, nncf.Dataset(calib_feeds), nncf.Dataset(list(zip(eval_feeds, labels))), validate,
        max_drop=max_drop / 100.0, drop_type=nncf.DropType.ABSOLUTE, subset_size=calib_images)
    nncf_s = time.perf_counter() - start
    nncf_float = float_weighted_layers_ov(nncf_model)
    nncf_plain = nncf.quantize(fp32_model, nncf.Dataset(calib_feeds), subset_size=calib_images)

    fp32_top1 = evaluate_ov(fp32_model, eval_feeds, labels, {"INFERENCE_PRECISION_HINT": "f32"})
    scores = {
        "fp32": fp32_top1,
        "nncf_int8": evaluate_ov(nncf_plain, eval_feeds, labels),
        "nncf_accuracy_control": evaluate_ov(nncf_model, eval_feeds, labels),
        "edgekit_int8": int8.report.metrics["int8"]["top1"],
        "edgekit_auto": mixed.report.metrics["int8"]["top1"],
    }
    weighted_total = sum(1 for op in fp32_model.get_ordered_ops()
                         if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul"))
    return {
        "meta": {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.processor()
                 or platform.machine(), "python": platform.python_version(), "nncf": nncf.__version__,
                 "openvino": ov.get_version(), "edgekit": edgekit.__version__, "cpu_threads_note":
                 "2-core shared host; times are wall clock of one run each"},
        "case": {"model": "shufflenetv2-1.0 fixture, 96x96", "planted": {"block": PLANT_BLOCK,
                 "channels": list(PLANT_CHANNELS), "scale": PLANT_SCALE}, "calibration_images": calib_images,
                 "evaluation": f"{len(evaluation)} synthetic shapes, seed {EVAL_SEED}, top-1", "max_drop_pt": max_drop,
                 "weighted_layers": weighted_total},
        "top1": scores,
        "drop_pt": {k: round(100 * (fp32_top1 - v), 3) for k, v in scores.items() if k != "fp32"},
        "edgekit": {"verdict": record["verdict"], "drop_int8_search": record["drop_int8"], "drop_search":
                    record["drop"], "report_drop": mixed.report.drop, "float_layers": record["float_layers"],
                    "float_weighted_layers": edgekit_weighted, "float_count": record["float_count"],
                    "evaluations": record["evaluations"], "search_s": record["search_seconds"],
                    "sensitivity_s": record["sensitivity_seconds"], "export_auto_s": round(auto_s, 1),
                    "export_int8_s": round(int8_s, 1), "latency": record["latency"]},
        "nncf": {"float_weighted_layers": nncf_float, "float_count": len(nncf_float),
                 "quantize_with_accuracy_control_s": round(nncf_s, 1)},
    }


def render(result: dict[str, Any]) -> str:
    """The markdown page of one run."""
    case, ek, nn, drop = result["case"], result["edgekit"], result["nncf"], result["drop_pt"]
    meta = result["meta"]
    lines = [
        "# Mixed precision: edgekit's search vs NNCF's accuracy control",
        "",
        f"{case['model']} with outliers planted in `{case['planted']['block']}` (channels "
        f"{case['planted']['channels']} of the depthwise conv's output x{case['planted']['scale']:g}, undone by the "
        f"1x1 conv reading them: the fp32 function is unchanged). {case['calibration_images']} synthetic calibration "
        f"images, evaluation on "
        f"{case['evaluation']}, budget {case['max_drop_pt']} pt. Generated by `benchmarks/mixed_precision_vs_nncf.py` "
        f"({meta['date']}, NNCF {meta['nncf']}, OpenVINO {meta['openvino']}; {meta['cpu_threads_note']}).",
        "",
        "| | top-1 | drop (pt) | weighted layers kept float | time (s) |",
        "|---|---:|---:|---:|---:|",
        f"| fp32 | {100 * result['top1']['fp32']:.2f} | | | |",
        f"| edgekit full INT8 (`openvino-int8`) | {100 * result['top1']['edgekit_int8']:.2f} | "
        f"{drop['edgekit_int8']:+.2f} | 0 | {ek['export_int8_s']} (export) |",
        f"| NNCF `quantize` | {100 * result['top1']['nncf_int8']:.2f} | {drop['nncf_int8']:+.2f} | 0 | |",
        f"| **edgekit `--precision auto`** | {100 * result['top1']['edgekit_auto']:.2f} | "
        f"{drop['edgekit_auto']:+.2f} | "
        f"**{len(ek['float_weighted_layers'])}** of {case['weighted_layers']} | "
        f"{ek['sensitivity_s'] + ek['search_s']:.1f} (sensitivity {ek['sensitivity_s']:.1f} + search "
        f"{ek['search_s']:.1f}; export {ek['export_auto_s']}) |",
        f"| NNCF `quantize_with_accuracy_control` | {100 * result['top1']['nncf_accuracy_control']:.2f} | "
        f"{drop['nncf_accuracy_control']:+.2f} | **{nn['float_count']}** of {case['weighted_layers']} | "
        f"{nn['quantize_with_accuracy_control_s']} |",
        "",
        f"edgekit kept float: {', '.join(f'`{f}`' for f in ek['float_weighted_layers']) or 'none'} "
        f"({ek['float_count']} nodes in all, {ek['evaluations']} float sets evaluated; verdict {ek['verdict']}; "
        f"latency vs full INT8 on onnxruntime {ek['latency']['int8_ms']} -> {ek['latency']['mixed_ms']} ms).",
        f"NNCF kept float: {', '.join(f'`{f}`' for f in nn['float_weighted_layers']) or 'none'}.",
        "",
        f"Both results are scored by the same OpenVINO pipeline on the same {EVAL_IMAGES} images (edgekit's through "
        "its report, "
        "which compiles an IR with fp32 layers at f32; NNCF's at the plugin's default precision).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-drop", type=float, default=1.0)
    parser.add_argument("--calib", type=int, default=100)
    parser.add_argument("--render", action="store_true", help="rewrite the .md from the .json")
    args = parser.parse_args()
    if args.render:
        result = json.loads(OUT.with_suffix(".json").read_text())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(args.max_drop, args.calib, Path(tmp))
        OUT.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    OUT.with_suffix(".md").write_text(render(result))
    print(render(result))


if __name__ == "__main__":
    main()
