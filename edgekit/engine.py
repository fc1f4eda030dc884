"""``edgekit build-engine``: a TensorRT engine built on the device from a ``trt-fp16``/``trt-int8`` bundle.

An engine only runs on the GPU model and TensorRT release that built it, so export writes the
inputs (``exporters/tensorrt.py``) and the engine is built here, on the board::

    <role>.qdq.onnx    Q/DQ placed by TensorRT's rules: explicit quantization (the default)
    <role>.onnx        the fp32 graph: fp16 engines, and --implicit INT8 with the cache
    <role>.trt_cache   TensorRT's calibration cache written from the same recipe
    tensorrt.json      which file is which per role; engine provenance once built

With the ``tensorrt`` Python module (TensorRT 8.6 or 10.x; JetPack's python3-libnvinfer) the
engine is built through its API; the result replaces the role's graph in ``manifest.json``
(rewritten atomically) with TensorRT's version and the device, which the runtime checks
before it deserializes an engine. Without the module the build stops with the equivalent
``trtexec`` command.

This module imports only the standard library and ``edgekit.bundle``/``edgekit.errors`` at
the top; the builder is type-checked with mypy against ``tensorrt-stubs``
(``tools/tensorrt_stubs.sh``), so its calls match TensorRT's real Python API.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.bundle import MANIFEST_NAME, GraphFile, Manifest, file_digest, read_manifest
from edgekit.errors import BundleError, EdgekitError, MissingDependencyError

if TYPE_CHECKING:
    import tensorrt as trt

SOURCES_NAME = "tensorrt.json"
INSTALL_HINT = "On a Jetson, JetPack provides it: sudo apt install python3-libnvinfer"
DEFAULT_ROIS = 300  # RoI-axis maximum when the manifest does not give post_nms_top_n


class EngineBuildError(EdgekitError):
    """TensorRT could not parse the graph or build the engine, or the request does not fit the bundle."""


@dataclass(frozen=True)
class EngineSource:
    """The files of one graph role that an engine can be built from.

    Args:
        role: the graph's role in the manifest (``model``, ``stage1``...).
        onnx: the fp32 ONNX file (fp16 engines; implicit INT8 with ``cache``).
        precision: what export prepared: ``int8`` (a recipe existed) or ``fp16``.
        qdq: the QDQ ONNX for explicit quantization; None without a recipe.
        cache: the TensorRT calibration cache; None without a recipe.
        recipe_hash: content hash of the QuantRecipe both were written from.
        sha256: file name -> SHA-256 of each file above, checked before a build reads it.
        layer_precision: node name -> ``fp16``/``fp32`` for layers mixed precision keeps float;
            the engine builder pins them (TensorRT layer-precision constraints).
    """

    role: str
    onnx: str
    precision: str
    qdq: str | None = None
    cache: str | None = None
    recipe_hash: str | None = None
    sha256: Mapping[str, str] = field(default_factory=dict)
    layer_precision: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineSource:
        """Inverse of ``dataclasses.asdict``."""
        return cls(role=data["role"], onnx=data["onnx"], precision=data["precision"], qdq=data.get("qdq"),
                   cache=data.get("cache"), recipe_hash=data.get("recipe_hash"), sha256=dict(data.get("sha256", {})),
                   layer_precision=dict(data.get("layer_precision", {})))

    @classmethod
    def describe(cls, bundle: str | Path, role: str, onnx: str, precision: str, *, qdq: str | None = None,
                 cache: str | None = None, recipe_hash: str | None = None,
                 layer_precision: Mapping[str, str] | None = None) -> EngineSource:
        """An EngineSource for files already written into ``bundle``, hashing them."""
        files = [f for f in (onnx, qdq, cache) if f]
        return cls(role=role, onnx=onnx, precision=precision, qdq=qdq, cache=cache, recipe_hash=recipe_hash,
                   sha256={f: file_digest(Path(bundle) / f)[0] for f in files},
                   layer_precision=dict(layer_precision or {}))

    def check(self, bundle: Path, name: str) -> Path:
        """The path of ``name`` in ``bundle``, after checking it against its recorded hash."""
        path = bundle / name
        if not path.is_file():
            raise BundleError(f"'{name}' (graph '{self.role}') is missing from bundle '{bundle}'; re-export it.")
        if name in self.sha256 and file_digest(path)[0] != self.sha256[name]:
            raise BundleError(f"'{name}' in bundle '{bundle}' does not match the hash in {SOURCES_NAME}: it was "
                              "changed after export. Re-export the bundle.")
        return path


@dataclass(frozen=True)
class EngineOptions:
    """What ``build-engine`` builds; neither ``fp16`` nor ``int8``: the bundle's own precision.

    Args:
        fp16: allow FP16 kernels.
        int8: allow INT8 kernels (roles export gave a recipe).
        dla_core: build for this DLA core with GPU fallback (Jetson AGX/NX); None: GPU.
        workspace_mb: TensorRT's workspace memory pool limit in MiB.
        implicit: INT8 from the calibration cache on the fp32 ONNX instead of the QDQ ONNX.
        out: engine file to write instead of ``<bundle>/<role>.engine`` (single-graph bundles).
        max_batch: largest batch of an engine whose batch dimension is symbolic.
    """

    fp16: bool = False
    int8: bool = False
    dla_core: int | None = None
    workspace_mb: int = 1024
    implicit: bool = False
    out: Path | None = None
    max_batch: int = 1

    def __post_init__(self) -> None:
        if self.workspace_mb < 1:
            raise EngineBuildError(f"--workspace takes MiB >= 1, got {self.workspace_mb}.")
        if self.dla_core is not None and self.dla_core < 0:
            raise EngineBuildError(f"--dla takes a DLA core index >= 0, got {self.dla_core}.")
        if self.max_batch < 1:
            raise EngineBuildError(f"--max-batch must be >= 1, got {self.max_batch}.")


Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


@dataclass(frozen=True)
class BuildStep:
    """One engine to build: its source, flags and where it goes."""

    role: str
    onnx: Path
    engine: Path
    fp16: bool
    int8: bool
    mode: str  # "explicit" (QDQ), "implicit" (calibration cache) or "float"
    cache: Path | None = None
    recipe_hash: str | None = None
    shapes: Shapes = field(default_factory=dict)  # input -> (min, opt, max) for symbolic dimensions
    layer_precision: Mapping[str, str] = field(default_factory=dict)  # node -> fp16/fp32 (mixed precision)


@dataclass(frozen=True)
class EngineRecord:
    """Provenance of a built engine, kept in ``tensorrt.json`` (and the manifest's toolchain)."""

    role: str
    engine: str
    sha256: str
    size_bytes: int
    tensorrt: str
    device: str
    precision: str
    mode: str
    recipe_hash: str | None
    workspace_mb: int
    dla_core: int | None
    built: str


def read_sources(bundle: str | Path) -> dict[str, EngineSource]:
    """Role -> EngineSource from the bundle's ``tensorrt.json``."""
    path = Path(bundle) / SOURCES_NAME
    if not path.is_file():
        raise BundleError(f"'{bundle}' has no {SOURCES_NAME}: it was not exported for TensorRT. "
                          "Export it with --target trt-int8 or --target trt-fp16.")
    data = json.loads(path.read_text())
    return {s["role"]: EngineSource.from_dict(s) for s in data.get("sources", [])}


def write_sources(bundle: str | Path, sources: Sequence[EngineSource],
                  engines: Sequence[EngineRecord] = ()) -> Path:
    """Write ``tensorrt.json`` atomically."""
    body = {"sources": [{**asdict(s), "sha256": dict(s.sha256), "layer_precision": dict(s.layer_precision)}
                        for s in sources],
            "engines": [asdict(e) for e in engines]}
    return _atomic_write(Path(bundle) / SOURCES_NAME, json.dumps(body, indent=2) + "\n")


def plan_build(bundle: str | Path, options: EngineOptions) -> list[BuildStep]:
    """The engines ``options`` asks for, one per graph role, checked against the bundle's files."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    sources = read_sources(bundle)
    wants_int8 = options.int8 or options.implicit or (
        not options.fp16 and any(s.precision == "int8" for s in sources.values()))
    wants_fp16 = options.fp16 or not options.int8
    if wants_int8 and not any(s.qdq or s.cache for s in sources.values()):
        raise EngineBuildError(f"bundle '{bundle}' holds no INT8 graph (target {manifest.target}); drop --int8/"
                               "--implicit, or export --target trt-int8 with --calib-data.")
    if options.out is not None and len(sources) != 1:
        raise EngineBuildError(f"--out names one engine file but bundle '{bundle}' has {len(sources)} graphs "
                               f"({', '.join(sources)}); drop --out to write <role>.engine into the bundle.")
    missing = sorted(set(sources) - {g.role for g in manifest.graphs})
    if missing:
        raise BundleError(f"{SOURCES_NAME} in '{bundle}' names graph(s) {', '.join(missing)} that the manifest "
                          "does not list; re-export the bundle.")
    steps = []
    for graph in manifest.graphs:
        source = sources.get(graph.role)
        if source is None:  # not an engine's graph: e.g. the fp32 reference of the accuracy report
            continue
        int8 = wants_int8 and bool(source.cache if options.implicit else source.qdq)
        mode = "float" if not int8 else "implicit" if options.implicit else "explicit"
        onnx = source.check(bundle, str(source.qdq if mode == "explicit" else source.onnx))
        cache = source.check(bundle, source.cache) if mode == "implicit" and source.cache else None
        steps.append(BuildStep(
            role=graph.role, onnx=onnx, engine=options.out or bundle / f"{graph.role}.engine", fp16=wants_fp16,
            int8=int8, mode=mode, cache=cache, recipe_hash=source.recipe_hash if int8 else None,
            shapes=profile_shapes(graph, manifest, options.max_batch),
            layer_precision=source.layer_precision if mode == "explicit" else {}))
    return steps


def profile_shapes(graph: GraphFile, manifest: Manifest, max_batch: int) -> Shapes:
    """(min, opt, max) shapes of the inputs with symbolic dimensions: ``batch`` and a detector's ``rois``."""
    rois = int(manifest.postprocess.params.get("post_nms_top_n", DEFAULT_ROIS))
    ranges = {"batch": (1, 1, max_batch), "rois": (1, rois, rois)}
    shapes: Shapes = {}
    for tensor in graph.inputs:
        symbolic = [d for d in tensor.shape if isinstance(d, str)]
        if not symbolic:
            continue
        unknown = [d for d in symbolic if d not in ranges]
        if unknown:
            raise EngineBuildError(f"input '{tensor.name}' of graph '{graph.role}' has symbolic dimension(s) "
                                   f"{', '.join(unknown)} whose range is unknown; export with fixed shapes.")
        mins, opts, maxs = zip(*(ranges[d] if isinstance(d, str) else (d, d, d) for d in tensor.shape))
        shapes[tensor.name] = (tuple(mins), tuple(opts), tuple(maxs))
    return shapes


def trtexec_command(step: BuildStep, options: EngineOptions) -> str:
    """The ``trtexec`` command (TensorRT 8.6 and 10.x spelling) that builds the same engine."""
    parts = ["trtexec", f"--onnx={step.onnx}"]
    parts += ["--int8"] if step.int8 else []
    parts += ["--fp16"] if step.fp16 else []
    parts += [f"--calib={step.cache}"] if step.cache else []
    parts += [f"--saveEngine={step.engine}", f"--memPoolSize=workspace:{options.workspace_mb}M"]
    for flag, index in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2)):
        if step.shapes:
            parts.append(flag + "=" + ",".join(f"{name}:{'x'.join(map(str, dims[index]))}"
                                               for name, dims in step.shapes.items()))
    if options.dla_core is not None:
        parts += [f"--useDLACore={options.dla_core}", "--allowGPUFallback"]
    if step.layer_precision:
        spec = ",".join(f"{name}:{precision}" for name, precision in sorted(step.layer_precision.items()))
        parts += [f"--layerPrecisions={spec}", f"--layerOutputTypes={spec}", "--precisionConstraints=obey"]
    return " ".join(parts)


def build_engine(bundle: str | Path, options: EngineOptions | None = None) -> list[EngineRecord]:
    """Build the bundle's TensorRT engine(s) here and record them in its manifest.

    Raises:
        MissingDependencyError: ``tensorrt`` is not importable; the message holds the
            equivalent ``trtexec`` command(s).
        EngineBuildError: TensorRT could not parse or build a graph, or options the bundle
            cannot honour (--int8 on a trt-fp16 bundle, --out with several graphs).
        BundleError: not a TensorRT bundle.
    """
    options = options or EngineOptions()
    bundle = Path(bundle)
    steps = plan_build(bundle, options)
    try:
        import tensorrt
    except ImportError as exc:
        commands = "\n".join(f"  {trtexec_command(step, options)}" for step in steps)
        raise MissingDependencyError(
            "TensorRT is not installed here: the 'tensorrt' Python module cannot be imported. "
            f"{INSTALL_HINT}. Or build the same engine with trtexec:\n{commands}"
        ) from exc
    version = str(getattr(tensorrt, "__version__", "unknown"))
    device = device_name()
    records = []
    for step in steps:
        _atomic_write(step.engine, serialize_engine(step, options))
        digest, size = file_digest(step.engine)
        records.append(EngineRecord(
            role=step.role, engine=step.engine.name, sha256=digest, size_bytes=size, tensorrt=version, device=device,
            precision="int8" if step.int8 else "fp16" if step.fp16 else "fp32", mode=step.mode,
            recipe_hash=step.recipe_hash, workspace_mb=options.workspace_mb, dla_core=options.dla_core,
            built=datetime.now(timezone.utc).isoformat(timespec="seconds")))
    if all(step.engine.parent.resolve() == bundle.resolve() for step in steps):
        record_engines(bundle, records)
    else:  # an engine outside the bundle: the bundle is left as it is, the provenance goes beside it
        _atomic_write(Path(f"{steps[0].engine}.json"), json.dumps(asdict(records[0]), indent=2) + "\n")
    return records


def record_engines(bundle: Path, records: Sequence[EngineRecord]) -> Manifest:
    """Point each role's manifest entry at its engine; TensorRT version and device into the toolchain."""
    manifest = read_manifest(bundle)
    by_role = {r.role: r for r in records}
    graphs = tuple(replace(g, path=by_role[g.role].engine, sha256=by_role[g.role].sha256,
                           size_bytes=by_role[g.role].size_bytes, precision=by_role[g.role].precision)
                   if g.role in by_role else g for g in manifest.graphs)
    toolchain = {**manifest.toolchain, "tensorrt": records[0].tensorrt, "tensorrt.device": records[0].device}
    for record in records:
        if record.recipe_hash:
            toolchain[f"tensorrt.recipe.{record.role}"] = record.recipe_hash
    updated = replace(manifest, graphs=graphs, toolchain=toolchain)
    sources = read_sources(bundle)
    write_sources(bundle, list(sources.values()), records)
    _atomic_write(bundle / MANIFEST_NAME, json.dumps(updated.to_dict(), indent=2) + "\n")
    return updated


def device_name() -> str:
    """The board or GPU the engine is built on: the Jetson's device-tree model, else nvidia-smi's name."""
    try:
        model = Path("/proc/device-tree/model").read_bytes().rstrip(b"\x00").decode(errors="replace").strip()
        if model:
            return model
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        return out or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def serialize_engine(step: BuildStep, options: EngineOptions) -> bytes:
    """Build one engine with TensorRT's Python API (8.6 and 10.x) and return its serialized bytes."""
    import tensorrt as trt

    version = str(getattr(trt, "__version__", ""))
    major = int(version.split(".")[0]) if version[:1].isdigit() else 10
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 8.x parses ONNX only into explicit-batch networks; 10.x has no other kind and
    # deprecates the flag.
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if major < 10 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(step.onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT {major}.x could not parse '{step.onnx}' (graph '{step.role}'): {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    if step.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if step.int8:
        # Explicit quantization needs the flag too; the Q/DQ scales come from the graph, no calibrator.
        config.set_flag(trt.BuilderFlag.INT8)
    profile = None
    if step.shapes:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in step.shapes.items():
            profile.set_shape(name, trt.Dims(list(low)), trt.Dims(list(opt)), trt.Dims(list(high)))
        config.add_optimization_profile(profile)
    if step.cache is not None:
        cache = step.cache.read_bytes()
        config.int8_calibrator = cache_calibrator(retag_cache(cache, version) if version else cache)
        if profile is not None:
            config.set_calibration_profile(profile)
    pin_layer_precisions(network, config, step.layer_precision)
    if options.dla_core is not None:
        if options.dla_core >= builder.num_DLA_cores:
            raise EngineBuildError(f"--dla {options.dla_core}: this device has {builder.num_DLA_cores} DLA core(s).")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers DLA cannot run go to the GPU
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"TensorRT could not build an engine for graph '{step.role}' (see its log above); "
                               f"try: {trtexec_command(step, options)} --verbose")
    return bytes(memoryview(plan))


def pin_layer_precisions(network: trt.INetworkDefinition, config: trt.IBuilderConfig,
                         layer_precision: Mapping[str, str]) -> list[str]:
    """Constrain the layers mixed precision keeps float to their precision; returns the layers pinned.

    The ONNX parser names each layer after its node (a node that becomes several layers gives
    them the node name plus a suffix), so a layer is pinned when its name starts with a float
    node's name. Without constraints TensorRT may still pick INT8 or FP16 kernels for them
    (https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/advanced.html,
    "Layer-Level Control of Precision").
    """
    import tensorrt as trt

    if not layer_precision:
        return []
    types = {"fp16": trt.float16, "fp32": trt.float32}
    pinned = []
    producers = {}  # tensor name -> (layer, output index)
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        for out in range(layer.num_outputs):
            producers[layer.get_output(out).name] = (layer, out)
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        match = next((n for n in layer_precision if layer.name == n or layer.name.startswith(n + "_")
                      or layer.name.startswith(n + " ")), None)
        if match is None or layer_precision[match] not in types:
            continue
        dtype = types[layer_precision[match]]
        layer.precision = dtype
        for out in range(layer.num_outputs):
            if layer.get_output_type(out) in (trt.float32, trt.float16):
                layer.set_output_type(out, dtype)
        if dtype == trt.float32:
            # an fp32 layer must also read fp32: the INT8 or FP16 layer before it would otherwise
            # hand it an fp16 tensor, which loses what the fp32 layer is kept for
            for i in range(layer.num_inputs):
                tensor = layer.get_input(i)
                source = producers.get(tensor.name) if tensor is not None else None
                if source is not None and source[0].get_output_type(source[1]) in (trt.float32, trt.float16):
                    source[0].set_output_type(source[1], trt.float32)
        pinned.append(layer.name)
    if pinned:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return pinned


def retag_cache(cache: bytes, version: str) -> bytes:
    """The cache with its header for TensorRT ``version``: TensorRT ignores a cache written for another release.

    The scales do not depend on the release; export writes the header for JetPack 6's TensorRT.
    """
    from edgekit.calib.trt_cache import cache_header

    header, newline, body = cache.partition(b"\n")
    if not header.startswith(b"TRT-"):
        raise BundleError("the calibration cache does not start with a 'TRT-' header; re-export the bundle.")
    algorithm = header.decode().rsplit("-", 1)[-1]
    return str(cache_header(version, algorithm)).encode() + newline + body


def cache_calibrator(cache: bytes) -> trt.IInt8EntropyCalibrator2:
    """An ``IInt8EntropyCalibrator2`` that hands TensorRT the cache and has no data of its own.

    TensorRT reads the cache first; it calls ``get_batch`` only when the cache does not fit
    (another TensorRT version or algorithm), and then ``None`` ends calibration with an error
    rather than calibrating on nothing.
    """
    import tensorrt as trt

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self, data: bytes) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.data = data

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:  # type: ignore[override]
            return None

        def read_calibration_cache(self) -> bytes:
            return self.data

        def write_calibration_cache(self, cache: Any) -> None:
            return None

    return CacheCalibrator(cache)


def _atomic_write(path: Path, data: str | bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
