"""Precision Gating (experimental): the MSB/LSB split, the gate, its bit-width accounting and its ONNX simulation."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from edgekit.precision.gating import (GatedConv2d, GatingConfig, calibrate_ranges, effective_bits, evaluate,
                                      gated_layers, to_gated, to_onnx, train)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 4)).eval()


def _data(n: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(n)]


def _gated(config: GatingConfig) -> nn.Module:
    model = to_gated(_net(), config)
    calibrate_ranges(model, [x for x, _ in _data()])
    return model


def test_layers_are_folded_gated_and_the_first_stays_uniform() -> None:
    model = _gated(GatingConfig(8, 4))
    layers = gated_layers(model)
    assert len(layers) == 3 and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert (layers[0].config.msb_bits, layers[1].config.msb_bits) == (8, 4)
    with torch.no_grad():  # BN folding keeps the fp32 function (checked through an 8-bit uniform model)
        x = _data(1, 3)[0][0]
        close = torch.allclose(_gated(GatingConfig(8, 8))(x), _net()(x), atol=0.05)
    assert close


def test_thresholds_decide_the_bit_width() -> None:
    model = _gated(GatingConfig(8, 4))
    first, gated = gated_layers(model)[0], gated_layers(model)[1:]
    measured = {}
    for value in (-1e9, 0.0, 1e9):
        for layer in gated:
            layer.threshold.data.fill_(value)
        measured[value] = evaluate(model, _data())[1]
        assert first.rate == 1.0  # the first conv reads the image: always 8 bits
    macs = {layer: layer.total * layer.macs_per_output for layer in gated_layers(model)}
    msb_only = (8 * macs[first] + 4 * sum(macs[g] for g in gated)) / sum(macs.values())
    # every LSB pass (4 + 5 signed bits > 8: counted as the uniform pass), then none
    assert measured[-1e9] == 8.0 and measured[1e9] == msb_only
    assert msb_only < measured[0.0] < 8.0
    # all LSB passes on equals uniform 8-bit; the gate only drops LSB contributions
    uniform = _gated(GatingConfig(8, 8, gated=True))
    for layer in gated_layers(model)[1:]:
        layer.threshold.data.fill_(-1e9)
    x = _data(1, 5)[0][0]
    with torch.no_grad():
        assert torch.allclose(model(x), uniform(x), atol=2e-3)  # two convolutions summed vs one: rounding


def test_msb_part_is_the_code_rounded_to_its_grid() -> None:
    from edgekit.precision.gating import _round_ste

    layer = GatedConv2d(nn.Conv2d(2, 2, 1), GatingConfig(8, 3))
    layer.quant.amax.fill_(1.0)
    q, _ = layer.quant.codes(torch.linspace(0, 1, 256).view(1, 2, 8, 16))
    step, top = 2.0 ** 5, 224.0  # 3 MSBs of an unsigned 8-bit code: 0, 32, ..., 224
    hb = torch.clamp(_round_ste(q / step) * step, max=top)
    assert torch.all(hb % step == 0) and float(hb.max()) == top
    assert torch.all((q - hb).abs() <= step) and float((q - hb).min()) >= -step / 2


def test_training_raises_thresholds_and_lowers_bits() -> None:
    model = _gated(GatingConfig(8, 4, penalty=5.0))
    _, before = evaluate(model, _data())

    def batches():
        while True:
            yield from _data(4, 7)

    losses = train(model, batches, steps=30, lr=1e-3)
    _, after = evaluate(model, _data())
    assert np.isfinite(losses).all() and after < before
    assert all(float(layer.threshold.mean()) > 0 for layer in gated_layers(model)[1:])


def test_onnx_simulation_matches_torch() -> None:
    model = _gated(GatingConfig(8, 4))
    for layer in gated_layers(model)[1:]:
        layer.threshold.data.fill_(0.05)
    x = _data(1, 9)[0][0][:2]
    graph = to_onnx(model, x)
    ops = {n.op_type for n in graph.graph.node}
    assert {"Greater", "Conv", "Round"} <= ops and ("Where" in ops or "Mul" in ops)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert effective_bits(model) > 0


def test_the_cli_marks_it_experimental() -> None:
    from typer.testing import CliRunner

    from edgekit.cli import app

    out = CliRunner().invoke(app, ["experimental", "precision-gating", "--help"]).output
    assert "EXPERIMENTAL" in out
