"""Segmentation on a Jetson: a segmenter bundle over a folder of images, masks blended and saved.

``--backend auto`` takes TensorRT on a Jetson when the bundle holds engines and the
``tensorrt`` Python package is there (JetPack), and whatever installed engine reads the
bundle elsewhere, so the script runs unchanged on a laptop. Runtime SDK only: no torch.

    python examples/jetson_segmentation.py --bundle bundles/bisenet --images photos/ --save runs/seg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import edgekit
from edgekit.data.image_io import list_images, load_image
from edgekit.runtimes import Segmenter, load, overlay_mask

DEFAULT_IMAGES = Path(edgekit.__file__).parent / "data" / "samples" / "seg-val" / "images"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="segmenter bundle directory")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of images")
    parser.add_argument("--backend", default="auto", help="auto, tensorrt, onnxruntime, openvino or litert")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (CPU backends only)")
    parser.add_argument("--max-images", type=int, default=0, help="stop after this many images (0: all)")
    parser.add_argument("--alpha", type=float, default=0.5, help="mask opacity in the saved overlays")
    parser.add_argument("--save", type=Path, default=None, help="folder for <name>_overlay.png and <name>_mask.png")
    args = parser.parse_args()

    model = load(args.bundle, backend=args.backend, threads=args.threads)
    if not isinstance(model, Segmenter):
        raise SystemExit(f"'{args.bundle}' holds a {model.manifest.task} model; this example needs a segmenter.")
    paths = list_images(args.images)[: args.max_images or None]
    if not paths:
        raise SystemExit(f"no images in '{args.images}'")
    if args.save is not None:
        args.save.mkdir(parents=True, exist_ok=True)
    h, w = model.manifest.input.imgsz
    print(f"{model.manifest.model}: {w}x{h} input, {len(model.manifest.labels) or '?'} classes, on {model.backend}")
    latencies = []
    for path in paths:
        image = load_image(path)
        seg, times = model.predict_timed(image)
        latencies.append(times.total_ms)
        print(f"{path.name}: {times.total_ms:.1f} ms (infer {times.infer_ms:.1f}) | {seg.summary()}")
        if args.save is not None:
            overlay_mask(image, seg, alpha=args.alpha).save(args.save / f"{path.stem}_overlay.png")
            # The class ids themselves, one byte per pixel, for evaluation tools.
            Image.fromarray(seg.mask.astype(np.uint8)).save(args.save / f"{path.stem}_mask.png")
    print(f"{len(paths)} images, median {np.median(latencies):.1f} ms, p90 {np.percentile(latencies, 90):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
