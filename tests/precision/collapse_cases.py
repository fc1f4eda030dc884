"""A segmenter that collapses under per-tensor INT8, with the same fp32 function as a normal one.

``CollapseSeg`` is what some published checkpoints look like: inputs normalised to about
±0.02, and a BatchNorm whose running variances are far below its ``eps``, so it never
normalises: its output is a per-channel offset (``beta``, ±2..6) plus a signal five hundred
times smaller. One INT8 scale per tensor has to span the offsets, and the signal then lives in one or
two of its 255 steps; the masks are lost. Built from a briefly trained ``TinySeg`` by an exact
rewrite (the next 1x1 conv divides the signal back out and cancels the offsets), so the fp32
masks are the trained ones.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from edgekit.data import Preprocess, open_dataset, synthesize
from edgekit.inputspec import make_input_spec

IMGSZ = 32
CLASSES = 7  # background + 6 shapes
INPUT_SCALE = 0.02  # the collapsing model's inputs span about ±0.02
SIGNAL = 0.002  # the pathological BatchNorm's output: SIGNAL x features + offsets


class TinySeg(nn.Module):
    """conv-bn-relu x3 (stride 1, 2, 1), a 1x1 mixing conv, a 1x1 classifier, bilinear back to the input size."""

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(24)
        self.mix = nn.Conv2d(24, 24, 1)
        self.conv3, self.bn3 = nn.Conv2d(24, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24)
        self.head = nn.Conv2d(24, classes, 1)
        self.input_size = (IMGSZ, IMGSZ)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.mix(self.bn2(self.conv2(x)))  # no activation between bn2 and mix: the rewrite needs it linear
        x = F.relu(self.bn3(self.conv3(F.relu(x))))
        return F.interpolate(self.head(x), size=size, mode="bilinear", align_corners=False)


def train_tiny_seg(data: Path, *, steps: int = 300, seed: int = 0) -> TinySeg:
    """A few hundred Adam steps on synthetic shapes (about 10 s on one core)."""
    torch.manual_seed(seed)
    spec = make_input_spec("segment", (IMGSZ, IMGSZ))
    pre = Preprocess.from_input_spec(spec)
    samples = list(open_dataset(data))
    x = torch.from_numpy(__import__("numpy").concatenate([pre(s.image)[0] for s in samples]))
    y = torch.stack([torch.from_numpy(s.mask.astype("int64")) for s in samples])
    model = TinySeg()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    weights = torch.ones(CLASSES)
    weights[0] = 0.3  # background covers most pixels
    for step in range(steps):
        idx = torch.randint(0, len(x), (32,))
        loss = F.cross_entropy(model(x[idx]), y[idx], weight=weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def make_collapsing(model: TinySeg, *, seed: int = 0) -> TinySeg:
    """The same fp32 function with tiny inputs and an un-normalising BatchNorm (see the module docstring)."""
    out = TinySeg()
    out.load_state_dict(model.state_dict())
    out.eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # Inputs INPUT_SCALE times smaller: conv1 reads them with weights 1/INPUT_SCALE larger; bn1 unchanged.
        out.conv1.weight.mul_(1.0 / INPUT_SCALE)
        # bn2: y = gamma (x - mean) / sqrt(var + eps) + beta. Replace by running_var ~ 0 and a large eps,
        # so y' = SIGNAL * y + offset: gamma' = SIGNAL * gamma * sqrt(eps') / sqrt(var + eps).
        bn = out.bn2
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        eps = 1e-2
        signs = torch.where(torch.rand(bn.num_features, generator=gen) < 0.5, -1.0, 1.0)
        offsets = signs * (2 + 4 * torch.rand(bn.num_features, generator=gen))
        y_shift = bn.bias - bn.running_mean * scale  # y = scale * x + y_shift
        bn.eps = eps
        bn.running_var.fill_(1e-6)
        bn.running_mean.zero_()
        new_scale = SIGNAL * scale
        bn.weight.copy_(new_scale * torch.sqrt(bn.running_var + eps))
        bn.bias.copy_(SIGNAL * y_shift + offsets)
        # mix reads y' = SIGNAL * y + offsets: W' = W / SIGNAL, b' = b - W' @ offsets
        w = out.mix.weight[:, :, 0, 0].clone()
        out.mix.weight.div_(SIGNAL)
        out.mix.bias.sub_((w / SIGNAL) @ offsets)
    return out


def input_stats() -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Mean and std (pixel units) that map pixels to INPUT_SCALE times the normal model's inputs."""
    spec = make_input_spec("segment", (IMGSZ, IMGSZ))
    return tuple(spec.mean), tuple(s / INPUT_SCALE for s in spec.std)


def seg_data(root: Path) -> tuple[Path, Path]:
    """Training and evaluation folders of 32x32 synthetic shapes."""
    return synthesize("seg", 400, 901, root / "seg-train", imgsz=IMGSZ), synthesize("seg", 48, 902,
                                                                                   root / "seg-eval", imgsz=IMGSZ)
