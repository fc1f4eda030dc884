"""edgekit end to end on the bundled default: the job `make demo` runs.

1. export ``thundernet-snet146`` (the trained synthetic-shapes fixture when it ships,
   else the untrained network, said loudly) to an INT8 ONNX bundle, calibrating on the
   bundled detection samples (the first images calibrate, the rest evaluate);
2. write the accuracy-drop report (report.json / report.html / report.png);
3. load the bundle with the numpy-only runtime SDK and predict on the bundled sample
   image, drawing the detections.

    python examples/quickstart.py --out runs/quickstart
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

MODEL = "thundernet-snet146"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="output folder")
    parser.add_argument("--target", default="onnx-int8", help="export target (see `edgekit export --help`)")
    parser.add_argument("--calib-samples", type=int, default=32, help="calibration images taken from the samples")
    args = parser.parse_args()

    import edgekit
    from edgekit.runtimes import load, render

    samples = Path(str(resources.files("edgekit.data") / "samples"))
    fixture = Path(str(resources.files("edgekit") / "fixtures" / f"{MODEL}.safetensors"))
    weights = fixture if fixture.is_file() else None
    print(f"[1/3] export {MODEL} -> {args.target} "
          f"({'trained fixture ' + fixture.name if weights else 'UNTRAINED weights: no fixture shipped'})")
    bundle = args.out / f"{MODEL}-{args.target}"
    result = edgekit.export(MODEL, target=args.target, out=bundle, weights=weights,
                            calib_data=samples / "det-val", eval_data=samples / "det-val",
                            calib_samples=args.calib_samples, progress=True)
    print(f"      bundle: {result.bundle} ({', '.join(g.path for g in result.manifest.graphs)})")

    print("[2/3] accuracy-drop report")
    if result.report is not None:
        print(f"      {result.report.summary()}")
        print(f"      {bundle / 'report.html'}")

    print("[3/3] predict on the bundled sample image (numpy-only runtime)")
    detector = load(bundle)
    image_path = samples / "sample.jpg"
    detections = detector.predict(image_path)
    from PIL import Image

    picture = render(Image.open(image_path).convert("RGB"), detections)
    picture.save(args.out / "sample_detections.jpg")
    print(f"      {len(detections)} detections, drawn into {args.out / 'sample_detections.jpg'}")
    for line in detections.summary().splitlines()[:5]:
        print(f"      {line}")


if __name__ == "__main__":
    main()
