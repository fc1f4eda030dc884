"""Random-weight modules whose activations stay large enough for a cosine to mean something."""

from __future__ import annotations

import torch
from torch import nn


def lively(module: nn.Module) -> nn.Module:
    """Give every BatchNorm random affine terms and statistics (seed 0); return the module in eval mode.

    Fresh BatchNorms (gamma 1, beta 0, unit statistics) let activations shrink layer after layer.
    """
    gen = torch.Generator().manual_seed(0)
    for bn in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
        n = bn.num_features
        bn.weight.data, bn.bias.data = torch.rand(n, generator=gen) + 0.5, torch.randn(n, generator=gen) * 0.1
        bn.running_mean, bn.running_var = torch.randn(n, generator=gen) * 0.1, torch.rand(n, generator=gen) + 0.5
    return module.eval()
