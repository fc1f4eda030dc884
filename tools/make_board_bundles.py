"""Export the bundles of the Raspberry Pi check on this host (x86, with torch).

    python tools/make_board_bundles.py OUT [--calib-samples N] [--threads N]

Writes one bundle per (model, target) of ``BOARD_SET`` into ``OUT/<model>-<target>/`` and
``OUT/bundles.json``, the list ``tools/board_predict.py`` reads on the host and, under
emulation, on arm64 (``tools/board_check_arm64.sh``): each bundle with its task, target,
the sample images to predict on (paths under ``edgekit/data/samples``, which ship in the
wheel) and where its weights came from.

Weights are the trained fixtures (``edgekit/fixtures/<model>.safetensors``, exported with
their card's input size and preprocessing). Where a fixture does not exist yet, the model is
exported with seeded random weights (convs He-initialised, so outputs have real margins) at
the input size of ``Fallback``; ``bundles.json`` and the output say so. ``tflite-int8`` is
calibrated on the shipped samples of the task (``edgekit/data/samples/{det,seg,cls}-val``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import edgekit

PACKAGE = Path(edgekit.__file__).resolve().parent
SAMPLES = PACKAGE / "data" / "samples"
FIXTURES = PACKAGE / "fixtures"
SHAPES = ("circle", "ellipse", "hexagon", "square", "star", "triangle")
SET_VERSION = 1


@dataclass(frozen=True)
class Fallback:
    """How a model is exported when its trained fixture is missing.

    Args:
        imgsz: (height, width) to export at (the zoo sizes are Cityscapes / ImageNet scale).
        labels: class names (their count sets the classes).
    """

    imgsz: tuple[int, int]
    labels: tuple[str, ...]


@dataclass(frozen=True)
class BoardModel:
    """One model of the check.

    Args:
        name: zoo name; its fixture is ``edgekit/fixtures/<name>.safetensors``.
        calib: samples folder (under ``edgekit/data/samples``) that calibrates ``tflite-int8``.
        images: sample images the board predicts on, relative to ``edgekit/data/samples``.
        targets: the targets exported.
        fallback: export settings without a fixture.
    """

    name: str
    calib: str
    images: tuple[str, ...]
    targets: tuple[str, ...]
    fallback: Fallback


# Two images per task keep the emulated run short. The classifier also ships as onnx-fp32, so
# the board runs onnxruntime (the ONNX backend on a Pi without LiteRT's file) once as well.
BOARD_SET: tuple[BoardModel, ...] = (
    BoardModel("thundernet-snet146", "det-val", ("det-val/images/000000.jpg", "det-val/images/000001.jpg"),
               ("tflite-fp32", "tflite-int8"), Fallback((320, 320), SHAPES)),
    BoardModel("lpsnet-s", "seg-val", ("seg-val/images/000000.jpg", "seg-val/images/000001.jpg"),
               ("tflite-fp32", "tflite-int8"), Fallback((256, 256), ("background", *SHAPES))),
    BoardModel("shufflenetv2-1.0", "cls-val", ("cls-val/star/000004.jpg", "cls-val/hexagon/000002.jpg"),
               ("tflite-fp32", "tflite-int8", "onnx-fp32"), Fallback((96, 96), SHAPES)),
)


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def weights_record(model: BoardModel) -> dict[str, Any]:
    """Where the weights come from: the fixture (with its hash and epochs) or seeded random weights."""
    fixture = FIXTURES / f"{model.name}.safetensors"
    if fixture.is_file():
        card_path = fixture.with_suffix(".json")
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        return {"source": "fixture", "path": f"edgekit/fixtures/{fixture.name}", "sha256": sha256(fixture),
                "epochs_done": card.get("epochs_done"), "metric": card.get("metric")}
    return {"source": "random", "seed": 0, "init": "kaiming_normal convs",
            "note": f"edgekit/fixtures/{fixture.name} does not exist yet: exported with random weights, so the "
                    "check compares engines on an untrained network"}


def export_one(model: BoardModel, target: str, out: Path, calib_samples: int) -> None:
    """Export ``model`` for ``target`` into ``out`` (fixture weights, else seeded random ones)."""
    import torch
    from torch import nn

    from edgekit.models import get_spec

    calib = {"calib_data": SAMPLES / model.calib, "calib_samples": calib_samples} if target.endswith("int8") else {}
    fixture = FIXTURES / f"{model.name}.safetensors"
    if fixture.is_file():
        edgekit.export(model.name, out=out, target=target, weights=fixture, **calib)
        return
    torch.manual_seed(0)
    spec = get_spec(model.name)
    module = spec.build(num_classes=len(model.fallback.labels)).eval()
    with torch.no_grad():  # PyTorch's default init leaves near-constant maps: argmax ties everywhere
        for conv in (m for m in module.modules() if isinstance(m, nn.Conv2d)):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    edgekit.export(module, out=out, target=target, task=spec.task.value, imgsz=model.fallback.imgsz,
                   labels=list(model.fallback.labels), name=model.name, **calib)


def make_bundles(out: Path, *, calib_samples: int = 32) -> dict[str, Any]:
    """Export every bundle of ``BOARD_SET`` into ``out``; returns (and writes) ``bundles.json``."""
    from edgekit.api import toolchain_versions

    out.mkdir(parents=True, exist_ok=True)
    bundles = []
    for model in BOARD_SET:
        weights = weights_record(model)
        if weights["source"] == "random":
            print(f"{model.name}: {weights['note']}", file=sys.stderr)
        for target in model.targets:
            name = f"{model.name}-{target}"
            start = time.perf_counter()
            export_one(model, target, out / name, calib_samples)
            seconds = time.perf_counter() - start
            print(f"{name}: exported in {seconds:.1f} s", file=sys.stderr)
            manifest = json.loads((out / name / "manifest.json").read_text())
            bundles.append({"name": name, "model": model.name, "task": manifest["task"], "target": target,
                            "path": name, "images": list(model.images), "weights": weights,
                            "input": manifest["input"]["shape"], "export_s": round(seconds, 1)})
    record = {"version": SET_VERSION, "edgekit_version": edgekit.__version__, "toolchain": toolchain_versions(),
              "calib_samples": calib_samples, "bundles": bundles}
    (out / "bundles.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the bundles and bundles.json")
    parser.add_argument("--calib-samples", type=int, default=32, help="tflite-int8 calibration images per task")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while exporting")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    make_bundles(args.out, calib_samples=args.calib_samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
