"""One briefly trained TinySeg and its collapsing twin per test session (training takes ~15 s on one core)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from collapse_cases import TinySeg, input_stats, make_collapsing, seg_data, train_tiny_seg


@dataclass(frozen=True)
class CollapseCase:
    """The collapsing segmenter, its data, and the export options its inputs need."""

    model: TinySeg
    normal: TinySeg
    train: Path
    eval: Path
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@pytest.fixture(scope="session")
def collapse_case(tmp_path_factory: pytest.TempPathFactory) -> CollapseCase:
    root = tmp_path_factory.mktemp("collapse")
    train, evaluation = seg_data(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        normal = train_tiny_seg(train)
    finally:
        torch.set_num_threads(threads)
    mean, std = input_stats()
    return CollapseCase(make_collapsing(normal), normal, train, evaluation, mean, std)
