"""Zoo models as optimized fp32 ONNX with trained-like BatchNorm statistics, for calib tests.

Fresh BatchNorm folds to nothing, so every channel would look alike; random statistics give
the per-channel imbalance a trained net has, which equalization and bias correction act on.
"""

from __future__ import annotations

import io
import warnings

import onnx

OPSET = 17


def trained_like_onnx(name: str, size: int) -> onnx.ModelProto:
    """Registered model ``name`` at ``size`` x ``size``, exported (input "input") and optimized."""
    import torch

    from edgekit.graph import optimize
    from edgekit.models import get_model

    torch.manual_seed(0)
    model = get_model(name).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            c = bn.num_features
            bn.weight.copy_(torch.exp(torch.randn(c, generator=g)))
            bn.bias.copy_(0.5 * torch.randn(c, generator=g))
            bn.running_mean.copy_(0.2 * torch.randn(c, generator=g))
            bn.running_var.copy_(torch.exp(torch.randn(c, generator=g)))
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), buffer, dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["output"])
    return optimize(onnx.load_from_string(buffer.getvalue()))[0]
