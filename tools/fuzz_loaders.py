"""Fuzz edgekit's loaders: manifests, bundles, ONNX and OpenVINO graph files, bundle archives.

Every case takes a small, valid bundle, breaks one thing about it (bytes flipped, a JSON field
replaced by a value of another type, a graph's protobuf edited, a tar member made
malicious...) and runs what a user runs on it: ``read_manifest``, ``verify``,
``edgekit.runtimes.load`` (onnxruntime or OpenVINO) and one ``predict``, or
``edgekit.archive.unpack``. The contract: the process never crashes or hangs, and the only
exceptions are edgekit's (``EdgekitError``); a case that loads and predicts is fine too.

Hypothesis generates the cases (``st.data()``; no shrinking: the property never fails, it
records). The cases run in worker processes, in chunks with their own seeds, under a 6 GiB
address-space limit, so that a crash (a signal from native code), a hang (no progress for
``--hang-s`` seconds) or an allocation a fuzzed manifest asks for cannot take the parent
down or exhaust the machine: the parent records the case and starts the next chunk.

    python tools/fuzz_loaders.py                      # 12,000 cases -> docs/reliability/fuzz.json
    python tools/fuzz_loaders.py --cases 500 --out /tmp/fuzz.json
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import platform
import selectors
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "reliability" / "fuzz.json"
ADDRESS_SPACE_BYTES = 6 << 30
IMGSZ = 16

# ---------------------------------------------------------------- fixture (parent, needs torch)


def make_fixture(root: Path) -> Path:
    """A tiny classifier exported to onnx-fp32 and openvino-fp32 bundles, and the first packed as .tar and .tar.gz."""
    import torch
    from torch import nn

    import edgekit
    from edgekit.archive import pack

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3)).eval()
    edgekit.export(model, out=root / "onnx", target="onnx-fp32", imgsz=(IMGSZ, IMGSZ), labels=["a", "b", "c"])
    edgekit.export(model, out=root / "openvino", target="openvino-fp32", imgsz=(IMGSZ, IMGSZ))
    pack(root / "onnx", root / "bundle.tar")
    pack(root / "onnx", root / "bundle.tar.gz")
    return root


# ---------------------------------------------------------------- worker: mutations

INTERESTING_STRINGS = ["", ".", "..", "../../etc/passwd", "/etc/passwd", "C:\\model.onnx", "model.onnx/", "a\\..\\b",
                       "model.onnx\x00.txt", "nan", "1e999", "\u202emodel.onnx", "model.xml", "manifest.json"]
INTERESTING_INTS = [0, -1, 1, 2**31 - 1, 2**31, 2**63 - 1, -(2**63), 2**64, 10**12, 3, 16, 100000]


def json_values(st: Any) -> Any:
    """Any JSON value (NaN and Inf included: Python's json reads them), biased to edge cases."""
    scalars = (st.none() | st.booleans() | st.integers() | st.sampled_from(INTERESTING_INTS)
               | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
               | st.sampled_from(INTERESTING_STRINGS))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                                           max_size=4), max_leaves=8)


def byte_mutations(st: Any, size: int) -> Any:
    """A list of (op, position, payload) edits on ``size`` bytes."""
    position = st.integers(0, max(size - 1, 0))
    op = st.tuples(st.sampled_from(["flip", "insert", "delete", "overwrite", "truncate", "duplicate"]), position,
                   st.binary(min_size=1, max_size=16) | st.sampled_from([b"\x00", b"\xff" * 8, b"\x7f\xff\xff\xff",
                                                                         b"\x80" * 10, b'"', b"{", b"]"]))
    return st.lists(op, min_size=1, max_size=6)


def apply_bytes(raw: bytes, ops: list[tuple[str, int, bytes]]) -> bytes:
    """``raw`` with the edits of ``byte_mutations`` applied in order."""
    data = bytearray(raw)
    for op, pos, payload in ops:
        pos = min(pos, max(len(data) - 1, 0))
        if op == "flip" and data:
            data[pos] ^= payload[0] or 1
        elif op == "insert":
            data[pos:pos] = payload
        elif op == "delete":
            del data[pos:pos + len(payload)]
        elif op == "overwrite":
            data[pos:pos + len(payload)] = payload
        elif op == "truncate":
            del data[pos:]
        elif op == "duplicate":
            data[pos:pos] = data[pos:pos + 64]
    return bytes(data)


def json_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and indices) into a JSON document, the root included."""
    paths = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            paths += json_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths += json_paths(item, (*prefix, index))
    return paths


def set_path(doc: Any, path: tuple, op: str, value: Any) -> Any:
    """``doc`` with the node at ``path`` replaced / deleted / given an extra key."""
    if not path:
        return value if op == "replace" else doc
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if op == "delete":
        del parent[last]
    elif op == "extra" and isinstance(parent[last], dict):
        parent[last]["fuzz_extra_key"] = value
    else:
        parent[last] = value
    return doc


def rehash(bundle: Path) -> None:
    """Rewrite the manifest's sha256/size of every listed file that exists (so ``verify`` passes)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    for graph in manifest["graphs"]:
        path = bundle / graph["path"]
        if path.is_file():
            data = path.read_bytes()
            graph["sha256"], graph["size_bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


class Case:
    """One fuzz case: a scratch copy of a fixture, what was done to it, and how to exercise it."""

    def __init__(self, fixture: Path, scratch: Path) -> None:
        self.fixture, self.scratch = fixture, scratch
        self.note: dict[str, Any] = {}

    def bundle(self, which: str) -> Path:
        """A fresh copy of fixture bundle ``which`` (``onnx`` or ``openvino``)."""
        dest = self.scratch / which
        shutil.copytree(self.fixture / which, dest)
        return dest


def mutate_manifest_bytes(case: Case, data: Any, st: Any) -> Callable[[], None]:
    bundle = case.bundle(data.draw(st.sampled_from(["onnx", "openvino"])))
    raw = (bundle / "manifest.json").read_bytes()
    ops = data.draw(byte_mutations(st, len(raw)))
    case.note["ops"] = [(o, p, base64.b64encode(b).decode()) for o, p, b in ops]
    (bundle / "manifest.json").write_bytes(apply_bytes(raw, ops))
    return lambda: exercise_bundle(bundle, case, data, st)


def mutate_manifest_json(case: Case, data: Any, st: Any) -> Callable[[], None]:
    bundle = case.bundle(data.draw(st.sampled_from(["onnx", "openvino"])))
    doc = json.loads((bundle / "manifest.json").read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        paths = json_paths(doc)
        path = data.draw(st.sampled_from(paths))
        op = data.draw(st.sampled_from(["replace", "replace", "delete", "extra"])) if path else "replace"
        value = data.draw(json_values(st))
        case.note.setdefault("edits", []).append([list(map(str, path)), op, repr(value)[:80]])
        doc = set_path(doc, path, op, value)
    (bundle / "manifest.json").write_text(json.dumps(doc))
    if data.draw(st.booleans()):
        try:
            rehash(bundle)
        except Exception:  # the edit broke the structure rehash walks: the manifest stays as edited
            pass
    return lambda: exercise_bundle(bundle, case, data, st)


def mutate_onnx_bytes(case: Case, data: Any, st: Any) -> Callable[[], None]:
    bundle = case.bundle("onnx")
    raw = (bundle / "model.onnx").read_bytes()
    ops = data.draw(byte_mutations(st, len(raw)))
    case.note["ops"] = [(o, p, base64.b64encode(b).decode()) for o, p, b in ops]
    (bundle / "model.onnx").write_bytes(apply_bytes(raw, ops))
    rehash(bundle)
    return lambda: exercise_bundle(bundle, case, data, st)


def _proto_edits(model: Any, data: Any, st: Any) -> list[str]:
    """Structural edits on an ONNX ModelProto, in place; returns their names."""
    import onnx

    graph = model.graph
    edits = data.draw(st.lists(st.sampled_from(["opset", "ir_version", "input_dim", "drop_node", "rename_output",
                                                "initializer_dims", "initializer_type", "drop_initializer",
                                                "attribute", "op_type", "output_dim", "raw_data"]),
                               min_size=1, max_size=3))
    for edit in edits:
        if edit == "opset":
            model.opset_import[0].version = data.draw(st.sampled_from([-1, 0, 1, 7, 16, 17, 18, 99, 2**40]))
        elif edit == "ir_version":
            model.ir_version = data.draw(st.sampled_from([0, 1, 3, 8, 11, 99, 2**40]))
        elif edit == "input_dim":
            dim = graph.input[0].type.tensor_type.shape.dim[data.draw(st.integers(0, 3))]
            dim.dim_value = data.draw(st.sampled_from([0, 1, 2, 3, 7, 2**31, 2**62]))
        elif edit == "output_dim" and graph.output[0].type.tensor_type.shape.dim:
            graph.output[0].type.tensor_type.shape.dim[-1].dim_value = data.draw(st.sampled_from([0, 1, 5, 2**40]))
        elif edit == "drop_node" and graph.node:
            del graph.node[data.draw(st.integers(0, len(graph.node) - 1))]
        elif edit == "rename_output" and graph.node:
            node = graph.node[data.draw(st.integers(0, len(graph.node) - 1))]
            node.output[0] = data.draw(st.sampled_from(["", "images", "x", node.input[0] if node.input else "y"]))
        elif edit == "op_type" and graph.node:
            node = graph.node[data.draw(st.integers(0, len(graph.node) - 1))]
            node.op_type = data.draw(st.sampled_from(["Relu", "Conv", "NoSuchOp", "Loop", "If", "Gemm", ""]))
        elif edit == "attribute" and graph.node:
            node = graph.node[data.draw(st.integers(0, len(graph.node) - 1))]
            node.attribute.append(onnx.helper.make_attribute(
                data.draw(st.sampled_from(["kernel_shape", "strides", "pads", "axis", "group", "bogus"])),
                data.draw(st.sampled_from([0, -1, 2**31, [0, 0], [1, 2, 3], [-5, 2**40]]))))
        elif graph.initializer and edit in ("initializer_dims", "initializer_type", "drop_initializer", "raw_data"):
            init = graph.initializer[data.draw(st.integers(0, len(graph.initializer) - 1))]
            if edit == "initializer_dims":
                init.dims[:] = data.draw(st.lists(st.sampled_from([0, 1, 2, 3, 4, 2**20, 2**40]), max_size=4))
            elif edit == "initializer_type":
                init.data_type = data.draw(st.sampled_from([0, 2, 6, 7, 10, 16, 99]))
            elif edit == "raw_data":
                init.raw_data = init.raw_data[: data.draw(st.integers(0, max(len(init.raw_data), 1)))]
            else:
                graph.initializer.remove(init)
    return edits


def mutate_onnx_proto(case: Case, data: Any, st: Any) -> Callable[[], None]:
    import onnx

    bundle = case.bundle("onnx")
    model = onnx.load(bundle / "model.onnx")
    case.note["edits"] = _proto_edits(model, data, st)
    (bundle / "model.onnx").write_bytes(model.SerializeToString())
    rehash(bundle)
    return lambda: exercise_bundle(bundle, case, data, st)


def mutate_openvino_ir(case: Case, data: Any, st: Any) -> Callable[[], None]:
    bundle = case.bundle("openvino")
    name = data.draw(st.sampled_from(["model.xml", "model.xml", "model.bin"]))
    raw = (bundle / name).read_bytes()
    if name == "model.xml" and data.draw(st.booleans()):
        # Text-level edits an IR parser meets: numbers, element types, versions.
        swaps = data.draw(st.lists(st.sampled_from([(b'"f32"', b'"f64"'), (b'"3"', b'"-3"'), (b"<dim>1</dim>",
                                   b"<dim>0</dim>"), (b'offset="0"', b'offset="999999999"'), (b'version="opset1"',
                                   b'version="opset999"'), (b'size="', b'size="9'), (b"2026.", b"2099."),
                                   (b'type="Parameter"', b'type="Nope"')]), min_size=1, max_size=3))
        for old, new in swaps:
            raw = raw.replace(old, new, 1)
        case.note["swaps"] = [o.decode() for o, _ in swaps]
    else:
        ops = data.draw(byte_mutations(st, len(raw)))
        case.note["ops"] = [(o, p, base64.b64encode(b).decode()) for o, p, b in ops]
        raw = apply_bytes(raw, ops)
    case.note["file"] = name
    (bundle / name).write_bytes(raw)
    rehash(bundle)
    return lambda: exercise_bundle(bundle, case, data, st, backend="openvino")


def mutate_archive_bytes(case: Case, data: Any, st: Any) -> Callable[[], None]:
    name = data.draw(st.sampled_from(["bundle.tar", "bundle.tar.gz"]))
    raw = (case.fixture / name).read_bytes()
    ops = data.draw(byte_mutations(st, len(raw)))
    case.note.update(file=name, ops=[(o, p, base64.b64encode(b).decode()) for o, p, b in ops])
    archive = case.scratch / name
    archive.write_bytes(apply_bytes(raw, ops))
    return lambda: exercise_archive(archive, case, data, st)


def mutate_archive_members(case: Case, data: Any, st: Any) -> Callable[[], None]:
    """A tar built member by member: the fixture's files plus hostile entries."""
    kinds = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
             "chardev": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}
    archive = case.scratch / "crafted.tar"
    extra = data.draw(st.lists(st.tuples(st.sampled_from(sorted(kinds)), st.sampled_from(INTERESTING_STRINGS + [
        "sub/model.onnx", "./model.onnx", "passes.json", "a//b", "sub/../../x"]), st.sampled_from(INTERESTING_STRINGS),
        st.integers(0, 4096)), min_size=1, max_size=4))
    order = data.draw(st.sampled_from(["before", "after"]))
    case.note.update(extra=[list(map(str, e)) for e in extra], order=order)
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        def add_fixture() -> None:
            for path in sorted((case.fixture / "onnx").iterdir()):
                tar.add(path, arcname=path.name)

        if order == "after":
            add_fixture()
        for kind, name, link, size in extra:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kinds[kind], link
            info.size = size if kind == "file" else 0
            tar.addfile(info, io.BytesIO(b"x" * info.size) if kind == "file" else None)
        if order == "before":
            add_fixture()
    return lambda: exercise_archive(archive, case, data, st)


def mutate_layout(case: Case, data: Any, st: Any) -> Callable[[], None]:
    """Files missing, replaced by folders or links, a manifest that is a folder."""
    bundle = case.bundle(data.draw(st.sampled_from(["onnx", "openvino"])))
    victim = data.draw(st.sampled_from(sorted(p.name for p in bundle.iterdir())))
    how = data.draw(st.sampled_from(["delete", "dir", "symlink-outside", "symlink-self", "empty", "symlink-devnull"]))
    case.note.update(victim=victim, how=how)
    path = bundle / victim
    path.unlink()
    if how == "dir":
        path.mkdir()
    elif how == "symlink-outside":
        path.symlink_to(case.fixture / "bundle.tar")
    elif how == "symlink-self":
        path.symlink_to(path)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "symlink-devnull":
        path.symlink_to("/dev/null")
    if data.draw(st.booleans()) and victim != "manifest.json":
        try:
            rehash(bundle)
        except OSError:
            pass
    return lambda: exercise_bundle(bundle, case, data, st)


MUTATORS: dict[str, Callable[[Case, Any, Any], Callable[[], None]]] = {
    "manifest-bytes": mutate_manifest_bytes, "manifest-json": mutate_manifest_json,
    "onnx-bytes": mutate_onnx_bytes, "onnx-proto": mutate_onnx_proto, "openvino-ir": mutate_openvino_ir,
    "archive-bytes": mutate_archive_bytes, "archive-members": mutate_archive_members, "layout": mutate_layout,
}


# ---------------------------------------------------------------- worker: what a user runs


def exercise_bundle(bundle: Path, case: Case, data: Any, st: Any, backend: str | None = None) -> None:
    """read_manifest, verify, load (a drawn backend, hashes checked or not), one predict."""
    import numpy as np

    from edgekit.bundle import read_manifest, verify
    from edgekit.runtimes import load

    read_manifest(bundle)
    verify(bundle)
    backend = backend or data.draw(st.sampled_from(["onnxruntime", "openvino"]))
    check = data.draw(st.booleans())
    case.note.update(backend=backend, check_hashes=check)
    emit({"event": "note", "note": json.loads(json.dumps(case.note, default=str))})  # kept by the parent on a crash
    model = load(bundle, backend=backend, threads=1, check_hashes=check)
    image = np.random.default_rng(0).integers(0, 256, (IMGSZ + 3, IMGSZ, 3), dtype=np.uint8)
    model.predict(image)


def exercise_archive(archive: Path, case: Case, data: Any, st: Any) -> None:
    """unpack into a fresh folder; an archive that unpacks must load and predict."""
    from edgekit.archive import ArchiveLimits, unpack

    limits = ArchiveLimits(max_member_bytes=1 << 20, max_total_bytes=4 << 20, max_members=64)
    dest = case.scratch / "unpacked"
    unpack(archive, dest, limits)
    exercise_bundle(dest, case, data, st, backend="onnxruntime")


def worker(fixture: Path, chunk: int, cases: int, seed: int, kinds: list[str]) -> None:
    """Run ``cases`` hypothesis examples (seeded ``seed``); print one JSON line per case start and end."""
    import resource

    global _records
    _records = os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES, ADDRESS_SPACE_BYTES))
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    from edgekit.errors import EdgekitError

    counter = iter(range(cases * 10))
    scratch_root = Path(tempfile.mkdtemp(prefix="edgekit-fuzz-"))

    @hypothesis_seed(seed)
    @settings(max_examples=cases, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def property_(data: Any) -> None:
        index = next(counter)
        kind = data.draw(st.sampled_from(kinds))
        scratch = scratch_root / str(index)
        scratch.mkdir()
        case = Case(fixture, scratch)
        emit({"event": "start", "chunk": chunk, "index": index, "kind": kind, "scratch": str(scratch)})
        outcome: dict[str, Any] = {"event": "end", "chunk": chunk, "index": index, "kind": kind}
        try:
            MUTATORS[kind](case, data, st)()
            outcome["outcome"] = "ok"
        except EdgekitError as exc:
            outcome.update(outcome="refused", error=type(exc).__name__)
        except MemoryError as exc:  # the address-space limit stopped an allocation a fuzzed file asked for
            outcome.update(outcome="unexpected", error="MemoryError", message=str(exc)[:300])
        except Exception as exc:
            outcome.update(outcome="unexpected", error=f"{type(exc).__module__}.{type(exc).__name__}",
                           message=" ".join(str(exc).split())[:300],
                           where=traceback.format_exc().strip().splitlines()[-3][:300])
        outcome["note"] = json.loads(json.dumps(case.note, default=str))
        emit(outcome)
        shutil.rmtree(scratch, ignore_errors=True)

    try:
        property_()
    finally:
        shutil.rmtree(scratch_root, ignore_errors=True)
    emit({"event": "done", "chunk": chunk})


_records = sys.stdout  # the worker points this at its own copy of stdout: native libraries print to fd 1


def emit(record: dict[str, Any]) -> None:
    _records.write(json.dumps(record) + "\n")
    _records.flush()


# ---------------------------------------------------------------- parent


def run_chunk(fixture: Path, chunk: int, cases: int, seed: int, hang_s: float,
              kinds: list[str]) -> tuple[list[dict], dict | None]:
    """Run one worker; returns its finished cases and a crash/hang record (None when it finished)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, __file__, "--worker", str(fixture), "--chunk", str(chunk), "--cases", str(cases),
               "--seed", str(seed), "--kinds", *kinds]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    finished: list[dict] = []
    started: dict | None = None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    problem = None
    while True:
        if not selector.select(timeout=hang_s):
            proc.kill()
            problem = {"type": "hang", "chunk": chunk, "case": started, "no_progress_s": hang_s}
            break
        line = proc.stdout.readline()
        if not line:
            code = proc.wait()
            if started is not None or code != 0:
                problem = {"type": "crash", "chunk": chunk, "case": started, "returncode": code}
            break
        record = json.loads(line)
        if record["event"] == "start":
            started = record
        elif record["event"] == "note" and started is not None:
            started["note"] = record["note"]
        elif record["event"] == "end":
            finished.append(record)
            started = None
        elif record["event"] == "done":
            proc.wait()
            break
    proc.stdout.close()
    if problem is not None and started is not None:
        # The worker died inside the case: keep its files to reproduce it, drop the rest of its scratch.
        scratch = Path(started.pop("scratch"))
        kept = Path(tempfile.gettempdir()) / "edgekit-fuzz-problems" / f"{chunk}-{started['index']}"
        shutil.rmtree(kept, ignore_errors=True)
        if scratch.exists():
            shutil.copytree(scratch, kept, symlinks=True)
            problem["files"] = str(kept)
        shutil.rmtree(scratch.parent, ignore_errors=True)
    return finished, problem


def summarise(results: list[dict], problems: list[dict]) -> dict[str, Any]:
    by_kind: dict[str, dict[str, Any]] = {}
    for r in results:
        row = by_kind.setdefault(r["kind"], {"cases": 0, "ok": 0, "refused": 0, "unexpected": 0, "errors": Counter()})
        row["cases"] += 1
        row[r["outcome"]] += 1
        if "error" in r:
            row["errors"][r["error"]] += 1
    for row in by_kind.values():
        row["errors"] = dict(row["errors"].most_common())
    unexpected = [r for r in results if r["outcome"] == "unexpected"]
    return {
        "cases": len(results) + len(problems),
        "ok": sum(r["outcome"] == "ok" for r in results),
        "refused_with_edgekit_error": sum(r["outcome"] == "refused" for r in results),
        "unexpected_exceptions": len(unexpected),
        "crashes": sum(p["type"] == "crash" for p in problems),
        "hangs": sum(p["type"] == "hang" for p in problems),
        "by_kind": dict(sorted(by_kind.items())),
        "problems": problems,
        "unexpected_examples": unexpected[:50],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=12_000, help="cases in all")
    parser.add_argument("--chunk-size", type=int, default=500, help="cases per worker process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hang-s", type=float, default=60.0, help="seconds without progress that count as a hang")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--kinds", nargs="+", choices=sorted(MUTATORS), default=sorted(MUTATORS),
                        help="mutation kinds to draw from (default: all)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.chunk, args.cases, args.seed, args.kinds)
        return 0

    start = time.perf_counter()
    results: list[dict] = []
    problems: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgekit-fuzz-fixture-") as tmp:
        fixture = make_fixture(Path(tmp))
        chunk = 0
        while len(results) + len(problems) < args.cases:
            want = min(args.chunk_size, args.cases - len(results) - len(problems))
            finished, problem = run_chunk(fixture, chunk, want, args.seed * 100_003 + chunk, args.hang_s, args.kinds)
            results += finished
            if problem is not None:
                problems.append(problem)
            if not finished and problem is None:
                break  # hypothesis ran out of distinct examples
            print(f"chunk {chunk}: {len(results) + len(problems)}/{args.cases} cases, "
                  f"{sum(r['outcome'] == 'unexpected' for r in results)} unexpected, {len(problems)} crashes/hangs",
                  flush=True)
            chunk += 1
    summary = summarise(results, problems)
    import numpy
    import onnxruntime
    import openvino

    body = {
        "what": "tools/fuzz_loaders.py: hypothesis-generated mutations of a valid bundle (manifest bytes and JSON "
                "fields, ONNX bytes and protobuf fields, OpenVINO IR, tar archive bytes and crafted members, file "
                "layout), each run through read_manifest, verify, runtimes.load + predict or archive.unpack",
        "contract": "no crash, no hang; only EdgekitError subclasses (or success)",
        **summary,
        "kinds": args.kinds, "seed": args.seed, "chunk_size": args.chunk_size, "hang_s": args.hang_s,
        "wall_s": round(time.perf_counter() - start, 1),
        "versions": {"python": platform.python_version(), "numpy": numpy.__version__,
                     "onnxruntime": onnxruntime.__version__, "openvino": openvino.get_version().split("-")[0]},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "OMP_NUM_THREADS=1 python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(body, indent=1) + "\n")
    print(f"{body['cases']} cases: {body['ok']} ok, {body['refused_with_edgekit_error']} refused with EdgekitError, "
          f"{body['unexpected_exceptions']} unexpected exceptions, {body['crashes']} crashes, {body['hangs']} hangs "
          f"-> {args.out}")
    return 0 if not (body["unexpected_exceptions"] or body["crashes"] or body["hangs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
