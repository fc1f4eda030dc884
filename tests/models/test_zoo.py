"""Every registered model: published size figures, one forward pass, right output shapes.

Parametrized over the registry, so registering a model is enough for it to be tested.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from edgekit.models import Task, get_spec, list_models
from edgekit.models.counting import count_params, measure

ALL = list_models()


def test_zoo_has_the_seed_families() -> None:
    assert len(ALL) >= 25
    for prefix in ("shufflenetv2-", "snet", "mobilenetv2", "mobilenetv3-", "hbonet", "efficientnet-b0",
                   "efficientnet-lite0", "efficientnetv2", "squeezenet", "thundernet-snet", "lighthead",
                   "bisenet", "dfanet-", "lpsnet-"):
        assert any(n.startswith(prefix) for n in ALL), prefix


@pytest.mark.parametrize("name", ALL)
def test_forward_shapes_and_published_size(name: str) -> None:
    spec = get_spec(name)
    torch.manual_seed(0)
    model = spec.build().eval()
    h, w = spec.input_size
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        out = model(torch.rand(1, 3, h, w))
    macs = counter.get_total_flops() // 2
    params = count_params(model)

    if spec.task is Task.CLASSIFY:
        assert out.shape == (1, spec.num_classes)
        tensors = [out]
    elif spec.task is Task.SEGMENT:
        assert out.shape == (1, spec.num_classes, h, w)
        tensors = [out]
    else:
        boxes, scores, labels = out
        k = boxes.shape[1]
        assert boxes.shape == (1, k, 4) and scores.shape == (1, k) and labels.shape == (1, k)
        assert labels.dtype == torch.int64
        valid = labels[0] >= 0
        kept = boxes[0, valid]
        assert bool((kept >= 0).all() and (kept[:, 0::2] <= w).all() and (kept[:, 1::2] <= h).all())
        tensors = [boxes, scores]
    assert all(bool(torch.isfinite(t).all()) for t in tensors)

    # Published figures (paper tables, cited in spec.source) within the registered tolerance.
    if spec.params_m is not None:
        assert params / 1e6 == pytest.approx(spec.params_m, rel=spec.tolerance), spec.source
    if spec.macs_g is not None:
        assert macs / 1e9 == pytest.approx(spec.macs_g, rel=spec.tolerance), spec.source


@pytest.mark.parametrize("name", ["mobilenetv2", "thundernet-snet146"])
def test_measure_matches_a_real_forward(name: str) -> None:
    """The meta-device count used by `edgekit models` equals the count of a real forward."""
    spec = get_spec(name)
    model = spec.build().eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, *spec.input_size))
    assert measure(spec) == (count_params(model), counter.get_total_flops() // 2)


def test_every_model_cites_a_source_and_has_figures() -> None:
    """A model is tested against a published figure, or its docstring says that none exists."""
    for name in ALL:
        spec = get_spec(name)
        assert spec.source and spec.summary, name
        if spec.params_m is None and spec.macs_g is None:
            assert "no published" in (spec.factory.__doc__ or "").lower(), f"{name}: no figure, no word why"
