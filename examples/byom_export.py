"""Bring your own model: export ``examples/my_net.py:build`` with the Python API and check it.

The network is built, given weights (here: random BatchNorm statistics standing in for a
training run), saved, exported to an fp32 ONNX deploy bundle, and run in onnxruntime
against PyTorch on the same input.

    python examples/byom_export.py --out runs/byom
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import save_file

import edgekit
from edgekit.bundle import verify

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from my_net import build  # noqa: E402  (the file sits next to this script)


def pretend_to_train(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics, as a trained network would have."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(c, generator=g))
            m.bias.data.copy_(0.2 * torch.randn(c, generator=g))
    return model.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/byom"), help="bundle directory to write")
    args = parser.parse_args()

    model = pretend_to_train(build(num_classes=10))
    labels = [f"class_{i}" for i in range(10)]
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "my_net.safetensors"
        save_file(model.state_dict(), str(weights))
        result = edgekit.export(f"{HERE / 'my_net.py'}:build", out=args.out, num_classes=10, weights=weights,
                                labels=labels, dynamic_batch=True)

    manifest = verify(result.bundle)  # re-hashes the graph file
    before, after = result.node_counts["model"]
    print(f"bundle {result.bundle}: {', '.join(g.path for g in manifest.graphs)}; "
          f"input {manifest.input.name} {list(manifest.input.shape)}, output {manifest.outputs[0].name}; "
          f"{before} -> {after} nodes after {len(result.passes['model'])} graph passes")

    x = torch.randn(4, 3, *manifest.input.imgsz, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy().astype(np.float64)
    session = ort.InferenceSession(str(result.bundle / manifest.graph("model").path),
                                   providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {manifest.input.name: x.numpy()})
    got = got.astype(np.float64)
    max_abs = float(np.abs(got - expected).max())
    cosine = float((got * expected).sum() / (np.linalg.norm(got) * np.linalg.norm(expected)))
    spread = float(expected.max() - expected.min())
    print(f"onnxruntime vs PyTorch, batch 4: max abs err {max_abs:.3g} (output range {spread:.3g}), "
          f"cosine {cosine:.9f}, same top-1 {int((got.argmax(1) == expected.argmax(1)).sum())}/4")
    ok = cosine >= 0.99999 and max_abs <= 1e-4 * spread
    print("agreement OK" if ok else "agreement FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
