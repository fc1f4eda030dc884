"""``edgekit.bundle_eval``: a bundle scored through the runtime SDK agrees with PyTorch's evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgekit
from edgekit.bundle_eval import evaluate_bundle, load_task
from edgekit.errors import BundleError, EdgekitError

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "edgekit" / "fixtures" / "shufflenetv2-1.0.safetensors"
CLS_VAL = ROOT / "edgekit" / "data" / "samples" / "cls-val"


@pytest.fixture(scope="module")
def fp32_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not FIXTURE.is_file():
        pytest.skip("the shufflenetv2-1.0 fixture is not in the tree")
    return edgekit.export("shufflenetv2-1.0", out=tmp_path_factory.mktemp("eval") / "b", weights=FIXTURE).bundle


def test_bundle_metric_equals_pytorch_evaluation(fp32_bundle: Path) -> None:
    from edgekit.evaluate import evaluate

    bundle = evaluate_bundle(fp32_bundle, CLS_VAL)
    torch_metrics = evaluate("shufflenetv2-1.0", FIXTURE, CLS_VAL)
    assert bundle["images"] == torch_metrics["images"] == 60
    assert bundle["top1"] == pytest.approx(torch_metrics["top1"])
    assert bundle["top5"] == pytest.approx(torch_metrics["top5"])


def test_a_float_bundle_has_no_reference_graphs(fp32_bundle: Path) -> None:
    with pytest.raises(BundleError, match="has no graph with role 'model.fp32'"):
        load_task(fp32_bundle, reference=True)


def test_another_graph_file_runs_in_the_bundle_pipeline(fp32_bundle: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy.onnx"
    shutil.copy(fp32_bundle / "model.onnx", copy)
    task = load_task(fp32_bundle, files={"model": copy})
    assert task.manifest.graph("model").path == "model.onnx" and task.predict(next(CLS_VAL.rglob("*.jpg"))).labels


def test_data_of_another_task_is_refused(fp32_bundle: Path) -> None:
    with pytest.raises(EdgekitError, match="is a segment dataset but the bundle is a classify model"):
        evaluate_bundle(fp32_bundle, ROOT / "edgekit" / "data" / "samples" / "seg-val")


def test_cli_scores_a_bundle_without_torch(fp32_bundle: Path, tmp_path: Path) -> None:
    # `edgekit eval BUNDLE` is the board-side evaluation: run it where torch cannot be imported.
    import json
    import subprocess
    import sys

    out = tmp_path / "m.json"
    code = ("import sys; sys.modules['torch'] = None; from edgekit.cli import main; "
            f"sys.exit(main(['eval', {str(fp32_bundle)!r}, '--data', {str(CLS_VAL)!r}, '--json', {str(out)!r}]))")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    metrics = json.loads(out.read_text())
    assert metrics["images"] == 60 and metrics["backend"] == "onnxruntime"
    assert metrics["top1"] == pytest.approx(evaluate_bundle(fp32_bundle, CLS_VAL)["top1"])


def test_cli_eval_wants_a_bundle_or_a_model(capsys: pytest.CaptureFixture[str]) -> None:
    from edgekit.cli import main

    assert main(["eval", "--data", str(CLS_VAL)]) != 0
    printed = capsys.readouterr()
    assert "either a BUNDLE directory" in printed.out + printed.err
