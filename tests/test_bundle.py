"""The deploy bundle: manifest round trip, hash verification, schema versions, atomic writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.bundle import (
    MANIFEST_NAME,
    SUPPORTED_SCHEMA_VERSIONS,
    GraphFile,
    Manifest,
    PostProcess,
    TensorSpec,
    atomic_bundle,
    file_digest,
    read_manifest,
    verify,
    write_manifest,
)
from edgekit.errors import BundleError
from edgekit.inputspec import ChannelOrder, ResizeMode, make_input_spec


def _pipeline_manifest(bundle: Path) -> Manifest:
    """A two-graph detector-style manifest over two small files written into ``bundle``."""
    (bundle / "backbone_rpn.onnx").write_bytes(b"graph one" * 100)
    (bundle / "rcnn_head.onnx").write_bytes(b"graph two" * 37)
    feat = TensorSpec("features", (1, 245, 20, 20))
    graphs = (
        GraphFile.from_file(bundle, "backbone_rpn.onnx", "backbone_rpn",
                            inputs=(TensorSpec("images", (1, 3, 320, 320)),),
                            outputs=(feat, TensorSpec("rpn_scores", (1, 1500, 2)))),
        GraphFile.from_file(bundle, "rcnn_head.onnx", "rcnn_head", inputs=(TensorSpec("rois", ("n", 5)), feat),
                            outputs=(TensorSpec("cls", ("n", 81)),)),
    )
    spec = make_input_spec("detect", (320, 320), channel_order="bgr", mean=(103.5, 116.3, 123.7))
    return Manifest(
        model="thundernet-snet146", task="detect", target="onnx-fp32", input=spec,
        outputs=(TensorSpec("boxes", (1, 100, 4), meaning="x1y1x2y2 in input pixels"),),
        graphs=graphs, postprocess=PostProcess("two_stage", {"nms_iou": 0.5, "score_threshold": 0.05}),
        labels=("person", "car"), num_classes=80, edgekit_version="0.1.0",
        toolchain={"torch": "2.13.0", "onnx": "1.23.2"},
    )


def test_manifest_round_trips_through_json(tmp_path: Path) -> None:
    manifest = _pipeline_manifest(tmp_path)
    write_manifest(manifest, tmp_path)
    back = read_manifest(tmp_path)
    assert back == manifest
    assert back.input.channel_order is ChannelOrder.BGR and back.input.resize is ResizeMode.LETTERBOX
    assert back.graph("rcnn_head").inputs[0].shape == ("n", 5)
    raw = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert raw["schema_version"] == 1 and raw["input"]["mean"] == [103.5, 116.3, 123.7]
    assert [g["role"] for g in raw["graphs"]] == ["backbone_rpn", "rcnn_head"]
    assert raw["graphs"][0]["size_bytes"] == 900


def test_verify_accepts_intact_files_and_names_a_changed_one(tmp_path: Path) -> None:
    manifest = _pipeline_manifest(tmp_path)
    write_manifest(manifest, tmp_path)
    assert verify(tmp_path) == manifest
    assert file_digest(tmp_path / "rcnn_head.onnx") == (manifest.graphs[1].sha256, 9 * 37)

    data = bytearray((tmp_path / "rcnn_head.onnx").read_bytes())
    data[5] ^= 1  # one flipped bit, same size
    (tmp_path / "rcnn_head.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"'rcnn_head\.onnx'.*does not match its manifest entry"):
        verify(tmp_path)

    (tmp_path / "rcnn_head.onnx").unlink()
    with pytest.raises(BundleError, match=r"lists 'rcnn_head\.onnx' \(role rcnn_head\) but the file is missing"):
        verify(tmp_path)


def test_unknown_schema_version_says_which_are_supported(tmp_path: Path) -> None:
    write_manifest(_pipeline_manifest(tmp_path), tmp_path)
    raw = json.loads((tmp_path / MANIFEST_NAME).read_text())
    raw["schema_version"] = 99
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"schema_version 99 is not supported; this edgekit reads version\(s\) 1"):
        read_manifest(tmp_path)
    assert SUPPORTED_SCHEMA_VERSIONS == (1,)


def test_malformed_manifests_raise_bundle_error(tmp_path: Path) -> None:
    write_manifest(_pipeline_manifest(tmp_path), tmp_path)
    raw = json.loads((tmp_path / MANIFEST_NAME).read_text())
    del raw["graphs"]
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="missing the field 'graphs'"):
        read_manifest(tmp_path)
    raw["graphs"] = []
    raw["input"]["resize"] = "squash"
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="malformed field"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_manifest(tmp_path)
    with pytest.raises(BundleError, match="is '.*' an edgekit bundle"):
        read_manifest(tmp_path / "nowhere")


def test_unknown_graph_role_lists_the_roles(tmp_path: Path) -> None:
    manifest = _pipeline_manifest(tmp_path)
    with pytest.raises(BundleError, match="roles: backbone_rpn, rcnn_head"):
        manifest.graph("model")


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_atomic_bundle_writes_only_at_the_end(tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    with atomic_bundle(dest) as tmp:
        (tmp / "model.onnx").write_bytes(b"x")
        assert not dest.exists() and tmp.parent == tmp_path
    assert (dest / "model.onnx").read_bytes() == b"x"
    assert _siblings(dest) == ["bundle"]  # no temporary directory left


def test_atomic_bundle_failure_leaves_nothing_and_keeps_the_old_bundle(tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    with pytest.raises(RuntimeError), atomic_bundle(dest) as tmp:
        (tmp / "model.onnx").write_bytes(b"half")
        raise RuntimeError("a pass failed")
    assert _siblings(dest) == []

    dest.mkdir()
    (dest / MANIFEST_NAME).write_text("{}")
    with pytest.raises(RuntimeError), atomic_bundle(dest) as tmp:
        (tmp / MANIFEST_NAME).write_text('{"new": 1}')
        raise RuntimeError("a pass failed")
    assert (dest / MANIFEST_NAME).read_text() == "{}" and _siblings(dest) == ["bundle"]

    with atomic_bundle(dest) as tmp:
        (tmp / MANIFEST_NAME).write_text('{"new": 1}')
    assert (dest / MANIFEST_NAME).read_text() == '{"new": 1}' and _siblings(dest) == ["bundle"]


def test_atomic_bundle_refuses_to_replace_a_directory_that_is_not_a_bundle(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(BundleError, match="not an edgekit bundle"), atomic_bundle(tmp_path / "photos"):
        pass
    assert (tmp_path / "photos" / "cat.jpg").read_bytes() == b"meow"


def test_bundle_module_imports_only_the_standard_library() -> None:
    # The numpy-only runtime SDK reads manifests with edgekit.bundle on boards without torch.
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import edgekit.bundle\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(n for n in new if n not in sys.stdlib_module_names and n != 'edgekit'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
