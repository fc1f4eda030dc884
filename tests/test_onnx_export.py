"""``torch_to_onnx``: opset 17 enforced, names applied, dynamic batch, clear failures."""

from __future__ import annotations

import io

import onnx
import pytest
import torch
from torch import nn

from edgekit.errors import ExportError
from edgekit.onnx_export import OPSET, opset_of, torch_to_onnx


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.bn(self.conv(x))
        return y, y.mean((2, 3))


def test_names_opset_and_dynamic_batch() -> None:
    model = torch_to_onnx(_TwoHeads(), torch.randn(2, 3, 8, 8), output_names=["features", "pooled"],
                          dynamic_batch=True)
    assert opset_of(model) == OPSET == 17
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["features", "pooled"]
    dims = [[d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output]
    assert dims == [["batch", 4, 8, 8], ["batch", 4]]
    assert not model.graph.node[0].domain and all(i.data_location == 0 for i in model.graph.initializer)


def test_output_name_count_must_match() -> None:
    with pytest.raises(ExportError, match=r"returns 2 output tensor\(s\) but 1 output name\(s\) were given"):
        torch_to_onnx(_TwoHeads(), torch.randn(1, 3, 8, 8), output_names=["features"])
    with pytest.raises(ExportError, match="number of output names provided"):
        torch_to_onnx(_TwoHeads(), torch.randn(1, 3, 8, 8), output_names=["a", "b", "c"])
    with pytest.raises(ExportError, match="must be unique"):
        torch_to_onnx(_TwoHeads(), torch.randn(1, 3, 8, 8), input_name="a", output_names=["a", "b"])


def test_an_opset_other_than_17_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # What torch 2.13's default (dynamo) exporter does whatever opset_version says.
    real_export = torch.onnx.export

    def writes_opset_18(*args: object, **kwargs: object) -> None:
        buffer = io.BytesIO()
        real_export(*args[:2], buffer, **kwargs)  # type: ignore[arg-type]
        model = onnx.load_from_string(buffer.getvalue())
        model.opset_import[0].version = 18
        args[2].write(model.SerializeToString())  # type: ignore[union-attr]

    monkeypatch.setattr(torch.onnx, "export", writes_opset_18)
    with pytest.raises(ExportError, match="the exporter wrote opset 18, not 17"):
        torch_to_onnx(_TwoHeads(), torch.randn(1, 3, 8, 8), output_names=["a", "b"])
