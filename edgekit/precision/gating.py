"""Precision Gating (experimental): dynamic per-input activation precision, trained in PyTorch, simulated in ONNX.

Zhang et al., "Precision Gating: Improving Neural Network Efficiency with Dynamic Dual-Precision
Activations", ICLR 2020 (https://arxiv.org/abs/2002.07136). Each gated convolution quantizes its
input to ``bits`` (B) and splits every code into its ``msb_bits`` most significant bits and the
rest::

    q = round(x / s)             hb = sign(q) * round(|q| / 2^(B - B_hb)) * 2^(B - B_hb)     lb = q - hb
    y_hb = conv(hb * s, W)       always computed: a B_hb-bit pass
    y    = y_hb + [y_hb > delta_c] * conv(lb * s, W)      the LSB pass only where the MSB result is large

(``|y_hb| > delta_c`` for a conv no ReLU follows: there a large negative result matters too).

``delta_c`` is a learned threshold per output channel. Training uses the hard gate forward and
a sigmoid of sharpness ``sharpness`` backward (a straight-through estimator), plus a penalty
on the mean soft gate that pushes thresholds up. The *effective* activation bit-width of a
layer is ``B_hb + rate * (B - B_hb + 1)``, ``rate`` being the share of outputs whose LSB pass ran
(the paper truncates the MSB part; here it is rounded, so the LSB correction needs a sign bit;
a layer gated so often that this exceeds B counts as B: it would run its uniform pass);
the model's is the MAC-weighted mean. The first convolution (the image) and the classifier stay
uniform ``bits``; weights are INT8 per output channel throughout.

No backend has kernels for the data-dependent second pass, so this is a training-time mode:
``to_onnx`` writes the gated inference as plain ONNX ops (two convolutions, Greater, Where) to
check it runs, not to deploy it. The CLI and docs mark it experimental.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from edgekit.inputspec import InputSpec

EXPERIMENTAL = ("Precision Gating is experimental: no backend (TensorRT, OpenVINO, TFLite, onnxruntime) has "
                "kernels for it")


@dataclass(frozen=True)
class GatingConfig:
    """How activations are quantized and gated.

    Args:
        bits: activation bits B of the full-precision pass.
        msb_bits: bits of the pass that always runs (B_hb); ``bits`` disables gating (uniform B).
        sharpness: slope of the training-time sigmoid gate.
        penalty: weight of the mean-gate-rate term in the training loss.
        gated: False: every LSB pass runs (uniform ``bits``), or none when ``msb_bits == bits``.
    """

    bits: int = 8
    msb_bits: int = 4
    sharpness: float = 5.0
    penalty: float = 0.05
    gated: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.msb_bits <= self.bits <= 16:
            raise ValueError(f"need 1 <= msb_bits <= bits <= 16, got msb_bits={self.msb_bits}, bits={self.bits}")


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def _floor_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.floor(x) - x).detach()


def fake_quant_weight(w: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Symmetric per-output-channel fake quantization (straight-through gradient)."""
    qmax = 2 ** (bits - 1) - 1
    scale = w.detach().abs().flatten(1).amax(1).clamp_min(1e-12).view(-1, *([1] * (w.dim() - 1))) / qmax
    return torch.clamp(_round_ste(w / scale), -qmax, qmax) * scale


class ActQuant(nn.Module):
    """Activation quantizer with a calibrated range: ``bits`` signed or unsigned codes, MSB/LSB split."""

    amax: torch.Tensor
    signed: torch.Tensor

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.register_buffer("amax", torch.zeros(()))
        self.register_buffer("signed", torch.zeros((), dtype=torch.bool))
        self.calibrating = False

    def qmax(self) -> int:
        """The largest code: ``2^(B-1) - 1`` signed, ``2^B - 1`` unsigned."""
        return 2 ** (self.bits - 1) - 1 if bool(self.signed) else 2 ** self.bits - 1

    def codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer codes (as float, straight-through) and the scale."""
        if self.calibrating:
            self.amax.copy_(torch.maximum(self.amax, x.detach().abs().max()))
            self.signed.copy_(self.signed | bool((x.detach() < 0).any()))
        qmax = self.qmax()
        scale = self.amax.clamp_min(1e-12) / qmax
        lo = -qmax if bool(self.signed) else 0
        return torch.clamp(_round_ste(x / scale), lo, qmax), scale


class GatedConv2d(nn.Module):
    """A (BatchNorm-folded) convolution with Precision Gating on its input; counts its gate rate."""

    def __init__(self, conv: nn.Conv2d, config: GatingConfig) -> None:
        super().__init__()
        self.conv, self.config = conv, config
        self.quant = ActQuant(config.bits)
        self.threshold = nn.Parameter(torch.zeros(conv.out_channels))
        self.rectified = True  # a ReLU follows (set by ``to_gated``)
        self.soft_rate = torch.zeros(())
        self.on = self.total = 0.0  # LSB outputs computed / outputs, since reset_counts()
        self.macs_per_output = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]

    def _conv(self, x: torch.Tensor, bias: bool) -> torch.Tensor:
        c = self.conv
        return F.conv2d(x, fake_quant_weight(c.weight), c.bias if bias else None, c.stride, c.padding, c.dilation,
                        c.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, scale = self.quant.codes(x)
        cfg = self.config
        step = 2.0 ** (cfg.bits - cfg.msb_bits)
        # The MSB part is the code rounded to its nearest multiple of 2^(B - B_hb), not truncated:
        # truncation biases y_hb low, and outputs just above the threshold were then gated off
        # (top-1 -1.3 pt on the ShuffleNetV2 fixture). The LSB correction is then signed.
        top = (self.quant.qmax() // step) * step
        hb = torch.sign(q) * torch.clamp(_round_ste(q.abs() / step) * step, max=top)
        y_hb = self._conv(hb * scale, bias=True)
        if cfg.msb_bits == cfg.bits or not cfg.gated:  # uniform: every output at ``bits``
            self.on += float(y_hb.numel())
            self.total += float(y_hb.numel())
            return y_hb if cfg.msb_bits == cfg.bits else y_hb + self._conv((q - hb) * scale, bias=False)
        y_lb = self._conv((q - hb) * scale, bias=False)
        # A ReLU after the conv zeroes negative outputs whatever their LSBs: gate on the value there,
        # on the magnitude elsewhere (a depthwise conv feeding a 1x1 conv uses both signs).
        margin = (y_hb if self.rectified else y_hb.abs()) - self.threshold.view(1, -1, 1, 1)
        hard = (margin > 0).to(y_hb.dtype)
        if self.training:
            soft = torch.sigmoid(cfg.sharpness * margin)
            gate = hard + soft - soft.detach()
            self.soft_rate = soft.mean()
        else:
            gate = hard
        self.on += float(hard.detach().sum())
        self.total += float(hard.numel())
        return y_hb + gate * y_lb

    def reset_counts(self) -> None:
        self.on = self.total = 0.0

    @property
    def rate(self) -> float:
        """Share of outputs whose LSB pass ran since ``reset_counts``."""
        return self.on / self.total if self.total else 0.0


class QuantLinear(nn.Module):
    """A linear layer with uniform ``bits`` activations and INT8 weights (the classifier)."""

    def __init__(self, linear: nn.Linear, bits: int) -> None:
        super().__init__()
        self.linear, self.quant = linear, ActQuant(bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, scale = self.quant.codes(x)
        return F.linear(q * scale, fake_quant_weight(self.linear.weight), self.linear.bias)


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """A copy with every Conv2d -> BatchNorm2d pair in a Sequential folded into the conv (eval statistics)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            keys = list(module._modules)
            for a, b in zip(keys, keys[1:]):
                conv, bn = module._modules[a], module._modules[b]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    module._modules[a] = fuse_conv_bn_eval(conv, bn)
                    module._modules[b] = nn.Identity()
    return model


def to_gated(model: nn.Module, config: GatingConfig) -> nn.Module:
    """A copy of ``model``: BatchNorms folded, convs gated (the first uniform ``bits``), linears ``bits``-bit."""
    model = fold_batchnorms(model)
    first = True
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for index, (name, child) in enumerate(children):
            if isinstance(child, nn.Conv2d):
                cfg = GatingConfig(config.bits, config.bits) if first else config
                gated = GatedConv2d(child, cfg)
                after = [m for _, m in children[index + 1:] if not isinstance(m, nn.Identity)][:1]
                gated.rectified = bool(after) and isinstance(after[0], (nn.ReLU, nn.ReLU6))
                setattr(parent, name, gated)
                first = False
            elif isinstance(child, nn.Linear):
                setattr(parent, name, QuantLinear(child, config.bits))
    return model


def gated_layers(model: nn.Module) -> list[GatedConv2d]:
    """The model's gated convolutions, in module order."""
    return [m for m in model.modules() if isinstance(m, GatedConv2d)]


def calibrate_ranges(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Set every activation quantizer's range to the largest magnitude seen on ``batches``."""
    quants = [m for m in model.modules() if isinstance(m, ActQuant)]
    model.eval()
    for q in quants:
        q.calibrating = True
    with torch.no_grad():
        for x in batches:
            model(x)
    for q in quants:
        q.calibrating = False


def effective_bits(model: nn.Module, example: torch.Tensor | None = None) -> float:
    """MAC-weighted mean activation bit-width over the gated convs since their counts were reset."""
    total = weighted = 0.0
    for layer in gated_layers(model):
        if not layer.total:
            continue
        cfg = layer.config
        # the LSB correction of a rounded MSB part is signed: one bit more than B - B_hb
        lsb_bits = cfg.bits - cfg.msb_bits + 1 if cfg.msb_bits < cfg.bits else 0
        bits = cfg.msb_bits + layer.rate * lsb_bits if cfg.msb_bits < cfg.bits and cfg.gated else cfg.bits
        bits = min(bits, cfg.bits)  # a layer gated that often would run its uniform B-bit pass instead
        macs = layer.total * layer.macs_per_output
        weighted += bits * macs
        total += macs
    return weighted / total if total else float("nan")


def gate_penalty(model: nn.Module) -> torch.Tensor:
    """Mean soft gate rate over the gated convs of the last training forward pass."""
    rates = [m.soft_rate for m in gated_layers(model) if m.config.gated and m.config.msb_bits < m.config.bits]
    return torch.stack(rates).mean() if rates else torch.zeros(())


@dataclass(frozen=True)
class GatingResult:
    """Accuracy and effective bit-width of one quantized variant on the evaluation images."""

    name: str
    top1: float
    bits: float

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """(top-1, effective activation bits) of a quantized model."""
    model.eval()
    for layer in gated_layers(model):
        layer.reset_counts()
    hits = count = 0
    with torch.no_grad():
        for x, y in batches:
            hits += int((model(x).argmax(1) == y).sum())
            count += len(y)
    return hits / max(count, 1), effective_bits(model)


def train(model: nn.Module, batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]], *, steps: int,
          lr: float = 1e-4, penalty: float | None = None, weights: bool = True) -> list[float]:
    """Quantization-aware fine-tuning: cross-entropy plus ``penalty`` x the mean gate rate; the losses.

    ``weights=False`` trains the thresholds only (the network's weights stay as trained), which
    keeps INT8's accuracy where a short fine-tuning on little data would cost some.
    """
    thresholds = [m.threshold for m in gated_layers(model)]
    others = [p for p in model.parameters() if p.requires_grad and all(p is not t for t in thresholds)]
    # thresholds move on the scale of the conv outputs: a larger step than the weights
    groups = [{"params": thresholds, "lr": lr * 100}] + ([{"params": others, "lr": lr}] if weights and others else [])
    opt = torch.optim.Adam(groups)
    weight = penalty if penalty is not None else next((m.config.penalty for m in gated_layers(model)), 0.0)
    losses = []
    model.train()
    stream = batches()
    for _ in range(steps):
        x, y = next(stream)
        loss = F.cross_entropy(model(x), y) + weight * gate_penalty(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def to_onnx(model: nn.Module, example: torch.Tensor) -> object:
    """The gated model's inference as plain ONNX ops (an opset-17 ModelProto), for simulation in onnxruntime."""
    from edgekit.onnx_export import torch_to_onnx

    return torch_to_onnx(model.eval(), example, output_names=("logits",))


# What a variant fine-tunes: nothing, everything (weights and thresholds), or the thresholds only.
NO_TRAINING, TRAIN_ALL, TRAIN_THRESHOLDS = "", "all", "thresholds"
# Variants ``compare_variants`` measures: name -> (config, what it fine-tunes). Precision Gating trains
# its thresholds only: a short fine-tuning of the weights on little data cost ~1 pt even at uniform
# INT8 on the ShuffleNetV2 fixture (docs/benchmarks/precision_gating.md).
VARIANTS: dict[str, tuple[GatingConfig, str]] = {
    "int8": (GatingConfig(8, 8), NO_TRAINING),
    "int4": (GatingConfig(4, 4), NO_TRAINING),
    "int4-qat": (GatingConfig(4, 4), TRAIN_ALL),
    "pg-8/4": (GatingConfig(8, 4, penalty=0.02), TRAIN_THRESHOLDS),
    "pg-8/4-qat": (GatingConfig(8, 4, penalty=0.02), TRAIN_ALL),
}


def compare_variants(model: nn.Module, train_batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]],
                     eval_batches: list[tuple[torch.Tensor, torch.Tensor]], *, steps: int,
                     variants: Mapping[str, tuple[GatingConfig, str]] | None = None,
                     lr: float = 1e-4) -> list[GatingResult]:
    """Top-1 and effective activation bits of uniform INT8/INT4 and Precision Gating, the same fine-tuning budget.

    Each variant starts from ``model``; ranges are calibrated on four training batches; trained
    variants then fine-tune for ``steps`` batches (see :data:`VARIANTS`).
    """
    results = [GatingResult("fp32", evaluate(model, eval_batches)[0], 32.0)]
    stream = train_batches()
    calib = [next(stream)[0] for _ in range(4)]
    for name, (config, training) in (variants or VARIANTS).items():
        quantized = to_gated(model, config)
        calibrate_ranges(quantized, calib)
        if training:
            train(quantized, train_batches, steps=steps, lr=lr, weights=training == TRAIN_ALL)
        top1, bits = evaluate(quantized, eval_batches)
        results.append(GatingResult(name, top1, round(bits, 3)))
    return results


def labelled_tensors(data: str | Path, spec: InputSpec, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A labelled class-folder dataset as (images ``[N, 3, H, W]`` preprocessed per ``spec``, labels ``[N]``)."""
    import numpy as np

    from edgekit.data import Preprocess, open_dataset

    dataset = open_dataset(data)
    pre = Preprocess.from_input_spec(spec)
    samples = list(dataset)[:limit]
    x = np.concatenate([pre(s.image)[0] for s in samples])
    return torch.from_numpy(x), torch.tensor([s.label for s in samples])


def batch_stream(x: torch.Tensor, y: torch.Tensor, batch: int, seed: int = 0
                 ) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """An endless shuffled batch stream factory over in-memory tensors (flip augmentation)."""
    def stream() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        while True:
            order = torch.randperm(len(x), generator=g)
            for k in range(0, len(order) - batch + 1, batch):
                idx = order[k:k + batch]
                xb = x[idx]
                flip = torch.rand(len(idx), generator=g) < 0.5
                yield torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb), y[idx]

    return stream
