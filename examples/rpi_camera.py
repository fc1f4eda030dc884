"""Camera loop for a Raspberry Pi: every frame through a deploy bundle, results printed and drawn.

Frames come from the Pi camera (picamera2), else a USB webcam (OpenCV), else a folder of
images, so the same script runs on a laptop. It needs the runtime SDK only (numpy, Pillow
and one engine, ``pip install edgekit[tflite]`` on a Pi): no torch.

    python examples/rpi_camera.py --bundle bundles/thundernet --max-frames 200
    python examples/rpi_camera.py --bundle bundles/thundernet --source folder --folder photos/ --save runs/cam
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

import edgekit
from edgekit.data.image_io import list_images, load_image
from edgekit.runtimes import load, render

DEFAULT_FOLDER = Path(edgekit.__file__).parent / "data" / "samples" / "det-val" / "images"
# A frame: its name, its pixels, and the channel order of an array frame.
Frame = tuple[str, "Image.Image | np.ndarray", str]


def picamera2_frames(args: argparse.Namespace) -> Iterator[Frame]:
    """Frames of the Pi camera (libcamera through picamera2)."""
    from picamera2 import Picamera2

    camera = Picamera2()
    camera.configure(camera.create_preview_configuration(main={"format": "RGB888", "size": tuple(args.size)}))
    camera.start()
    try:
        for i in itertools.count():
            # picamera2's "RGB888" holds each pixel as B, G, R in memory (libcamera names formats by word order).
            yield f"picamera2-{i:05d}", camera.capture_array(), "bgr"
    finally:
        camera.stop()


def opencv_frames(args: argparse.Namespace) -> Iterator[Frame]:
    """Frames of a V4L2 / USB camera through OpenCV (BGR)."""
    import cv2

    capture = cv2.VideoCapture(args.camera)
    if not capture.isOpened():
        raise OSError(f"OpenCV found no camera at index {args.camera}")
    capture.set(cv2.CAP_PROP_FRAME_WIDTH, args.size[0])
    capture.set(cv2.CAP_PROP_FRAME_HEIGHT, args.size[1])
    try:
        for i in itertools.count():
            ok, frame = capture.read()
            if not ok:
                return
            yield f"opencv-{i:05d}", frame, "bgr"
    finally:
        capture.release()


def folder_frames(args: argparse.Namespace) -> Iterator[Frame]:
    """The images of a folder, in name order, as if a camera had taken them."""
    paths = list_images(args.folder)
    if not paths:
        raise OSError(f"no images in '{args.folder}'")
    for path in paths:
        yield path.name, load_image(path), "rgb"


SOURCES: dict[str, Callable[[argparse.Namespace], Iterator[Frame]]] = {
    "picamera2": picamera2_frames, "opencv": opencv_frames, "folder": folder_frames,
}


def open_source(args: argparse.Namespace) -> tuple[str, Iterator[Frame]]:
    """The first source that delivers a frame (``auto``: Pi camera, then webcam, then the folder)."""
    names = list(SOURCES) if args.source == "auto" else [args.source]
    for name in names:
        frames = SOURCES[name](args)
        try:
            first = next(frames)  # starting the generator opens the device
        except (ImportError, OSError, StopIteration) as exc:
            print(f"source {name}: unavailable ({exc or 'no frames'})")
            continue
        return name, itertools.chain([first], frames)
    raise SystemExit(f"no frame source worked ({', '.join(names)})")


def to_picture(pixels: Image.Image | np.ndarray, order: str) -> Image.Image:
    """A Pillow RGB image of a frame, for drawing."""
    if isinstance(pixels, Image.Image):
        return pixels.convert("RGB")
    return Image.fromarray(np.ascontiguousarray(pixels[:, :, 2::-1] if order == "bgr" else pixels[:, :, :3]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="deploy bundle directory")
    parser.add_argument("--backend", default="auto", help="auto, litert, openvino, onnxruntime or tensorrt")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per inference (a Pi 5 has 4)")
    parser.add_argument("--source", choices=["auto", *SOURCES], default="auto", help="where frames come from")
    parser.add_argument("--camera", type=int, default=0, help="OpenCV camera index")
    parser.add_argument("--size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"), help="camera frame size")
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help="images used when no camera is found")
    parser.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0: run until ^C)")
    parser.add_argument("--save", type=Path, default=None, help="folder for the frames with results drawn")
    args = parser.parse_args()

    model = load(args.bundle, backend=args.backend, threads=args.threads)
    source, frames = open_source(args)
    print(f"{model.manifest.model} ({model.manifest.task}) on {model.backend}, frames from {source}")
    if args.save is not None:
        args.save.mkdir(parents=True, exist_ok=True)
    latencies = []
    start = time.perf_counter()
    limit = args.max_frames or None
    try:
        for name, pixels, order in itertools.islice(frames, limit):
            result, times = model.predict_timed(pixels, input_order=order)
            latencies.append(times.total_ms)
            first = result.summary().splitlines()[0] if len(result) else "-"
            print(f"{name}: {len(result)} results in {times.total_ms:.1f} ms (infer {times.infer_ms:.1f}) | {first}")
            if args.save is not None:
                render(to_picture(pixels, order), result).save(args.save / f"{Path(name).stem}.jpg", quality=90)
    except KeyboardInterrupt:
        pass
    wall = time.perf_counter() - start
    if latencies:
        print(f"{len(latencies)} frames, median {np.median(latencies):.1f} ms per frame, "
              f"{len(latencies) / wall:.1f} FPS with capture and drawing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
