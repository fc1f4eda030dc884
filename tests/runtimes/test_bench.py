"""Benchmark records: percentiles, split, memory and CPU description (no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from runtime_cases import Case

from edgekit.cli import main
from edgekit.errors import EdgekitError
from edgekit.runtimes import benchmark, load
from edgekit.runtimes.cpuinfo import ISA_FLAGS, cpu_description

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse4_2 avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse4_2
"""
PI5_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU part\t: 0xd0b

Model\t\t: Raspberry Pi 5 Model B Rev 1.0
"""


@pytest.mark.parametrize("text, model, isa", [
    (X86_CPUINFO, "Intel(R) Xeon(R) Platinum 8480+",
     ["sse4_2", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"]),
    (PI5_CPUINFO, "Raspberry Pi 5 Model B Rev 1.0", ["asimd", "asimddp", "asimdhp"]),
])
def test_cpu_description_reads_proc_cpuinfo(tmp_path: Path, text: str, model: str, isa: list[str]) -> None:
    (tmp_path / "cpuinfo").write_text(text)
    cpu = cpu_description(tmp_path / "cpuinfo")
    assert cpu["model"] == model and cpu["isa"] == isa
    assert set(cpu_description(tmp_path / "missing")["isa"]) == set()


def test_benchmark_record(classifier_case: Case) -> None:
    model = load(classifier_case.bundle, backend="onnxruntime", threads=1)
    r = benchmark(model, classifier_case.image, runs=5, warmup=1)
    lat = r.latency_ms
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert sum(r.split_ms.values()) == pytest.approx(lat["mean"], rel=1e-9)
    assert r.pre_post_share == pytest.approx((r.split_ms["pre"] + r.split_ms["post"]) / lat["mean"])
    assert r.fps == pytest.approx(1000 / lat["mean"])
    assert (r.model, r.task, r.backend, r.threads, r.runs, r.warmup) == (
        "shufflenetv2-1.0", "classify", "onnxruntime", 1, 5, 1)
    assert r.input_size == (96, 96) and r.results == 5
    assert r.peak_rss_mb is not None and r.peak_rss_mb > 10
    assert set(r.cpu["isa"]) <= set(ISA_FLAGS)
    assert r.backend_settings["model"]["intra_op_num_threads"] == 1
    assert json.loads(json.dumps(r.to_dict()))["latency_ms"]["p99"] == pytest.approx(lat["p99"])
    with pytest.raises(EdgekitError, match="runs must be >= 1"):
        benchmark(model, classifier_case.image, runs=0)


def test_cli_bench_prints_and_writes_json(detector_case: Case, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    code = main(["bench", str(detector_case.bundle), "--backend", "openvino", "--threads", "1", "--runs", "3",
                 "--warmup", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    for text in ("on openvino, threads 1, 320x320, 3 runs after 1 warm-up", "p50", "p90", "p99", "FPS",
                 "peak memory", "pre+post", "ISA:"):
        assert text in printed
    record = json.loads(out.read_text())
    assert record["backend"] == "openvino" and record["runs"] == 3 and record["input_size"] == [320, 320]
    assert set(record["split_ms"]) == {"pre", "infer", "post"}
    # auto runs the single-graph detector on OpenVINO (runtimes.tasks.SINGLE_GRAPH_BACKENDS).
    assert record["graph"] == "single" and list(record["backend_settings"]) == ["single"]
    assert record["backend_settings"]["single"]["config"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert np.isfinite(record["latency_ms"]["p99"]) and record["results"] > 0
