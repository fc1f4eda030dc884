"""N threads calling ``predict`` on one loaded task get what one thread gets."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from runtime_cases import CPU_BACKENDS, Case, tflite_linear_classifier, write_classifier_bundle

from edgekit.runtimes import installed_backends, load

THREADS = 4


def same(a: Any, b: Any) -> bool:
    """Equal results: ids and labels exactly, floats to the last bit."""
    arrays = ("class_ids", "scores", "boxes", "mask")
    return a.labels == b.labels and all(np.array_equal(getattr(a, n), getattr(b, n)) for n in arrays if hasattr(a, n))


def concurrent_predictions(model: Any, images: list[Any]) -> list[Any]:
    """Every image predicted twice, from THREADS threads at once, in submission order."""
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return list(pool.map(model.predict, images * 2))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case_name", ["classifier_case", "detector_case", "segmenter_case"])
def test_threads_get_single_thread_results(case_name: str, backend: str, request: pytest.FixtureRequest) -> None:
    case: Case = request.getfixturevalue(case_name)
    model = load(case.bundle, backend=backend, threads=1)
    # Different images so that a result handed to the wrong thread would show.
    images = [case.image, case.image.transpose(0), case.image.transpose(1), case.image.rotate(180)]
    expected = [model.predict(im) for im in images]
    assert not same(expected[0], expected[1]) or case_name == "classifier_case"
    got = concurrent_predictions(model, images)
    assert all(same(g, e) for g, e in zip(got, expected * 2))


@pytest.mark.skipif("litert" not in installed_backends(), reason="no LiteRT interpreter installed")
def test_litert_threads_get_single_thread_results(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    weight, bias = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    bundle = write_classifier_bundle(tmp_path / "b", "model.tflite", tflite_linear_classifier(weight, bias, (16, 16)),
                                     (16, 16), 4, target="tflite-fp32")
    model = load(bundle, backend="litert", threads=1)
    # Solid colours plus noise: the mean colour, all this model sees, differs per image.
    images = [np.clip(rng.integers(0, 256, size=3) + rng.normal(0, 8, size=(24, 24, 3)), 0, 255).astype(np.uint8)
              for _ in range(8)]
    expected = [model.predict(im) for im in images]
    assert len({tuple(e.class_ids.tolist()) for e in expected}) > 1
    got = concurrent_predictions(model, images)
    assert all(same(g, e) for g, e in zip(got, expected * 2))
