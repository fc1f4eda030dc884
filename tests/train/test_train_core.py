"""The trainer core: schedule, batching, fp16 checkpoints and cards, the task table, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from edgekit.data import synthesize
from edgekit.errors import WeightsError
from edgekit.models.registry import Task, get_spec
from edgekit.models.weights import load_weights
from edgekit.train import TrainConfig, TrainError, WeightsCard, card_path, get_task_trainer, read_card, \
    register_task_trainer, save_weights, train
from edgekit.train.classification import ClassificationTrainer
from edgekit.train.core import epoch_batches, make_optimizer, warmup_cosine
from edgekit.train.segmentation import SegmentationTrainer


@pytest.fixture(scope="module")
def tiny_cls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 32x32 classification images, one per class (seed 7)."""
    return synthesize("cls", 6, 7, tmp_path_factory.mktemp("data") / "cls", imgsz=32)


def _config(data: Path, out: Path, **kw: object) -> TrainConfig:
    base = dict(model="shufflenetv2-0.5", data=data, out=out, epochs=1, batch=6, imgsz=32, threads=1, progress=False)
    return TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_warmup_then_cosine_to_one_percent() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_cosine(opt, total_steps=100, warmup_steps=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[5] == pytest.approx(0.55)
    assert max(lrs) == pytest.approx(1.0) and lrs.index(max(lrs)) == 10
    assert lrs[55] == pytest.approx(0.01 + 0.99 * 0.5, abs=1e-9)  # half-way through the cosine
    assert lrs[-1] == pytest.approx(0.01, abs=2e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_warmup_is_capped_at_a_quarter_of_the_run() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_cosine(opt, total_steps=8, warmup_steps=100)
    for _ in range(2):
        opt.step()
        schedule.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)


def test_epoch_batches_are_full_permuted_and_seeded() -> None:
    batches = list(epoch_batches(10, 3, np.random.default_rng(0)))
    assert [len(b) for b in batches] == [3, 3, 3]  # remainder dropped: BatchNorm sees full batches
    flat = sum(batches, [])
    assert len(set(flat)) == 9 and flat != sorted(flat)
    assert batches == list(epoch_batches(10, 3, np.random.default_rng(0)))


def test_weight_decay_skips_norms_and_biases() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    decay, rest = make_optimizer(model, "sgd", 0.1, 0.05).param_groups
    assert decay["weight_decay"] == 0.05 and rest["weight_decay"] == 0.0
    assert sorted(p.ndim for p in decay["params"]) == [2, 4]
    assert len(rest["params"]) == 4  # conv bias, bn weight and bias, linear bias


def test_save_weights_is_fp16_keeps_int_buffers_and_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    model[1].running_var.uniform_(0.5, 2.0)
    model[1].num_batches_tracked.fill_(123)
    path = save_weights(model.state_dict(), tmp_path / "w.safetensors", metadata={"model": "x"})
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["model"] == "x"
        assert f.get_tensor("0.weight").dtype == torch.float16
        assert f.get_tensor("1.num_batches_tracked").dtype == torch.int64
    loaded = load_weights(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)), path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v.half().to(v.dtype)), k
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # the temporary file is gone


def test_save_weights_refuses_values_beyond_fp16(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="do not fit in fp16"):
        save_weights({"w": torch.tensor([1e6])}, tmp_path / "w.safetensors")
    assert not any(tmp_path.iterdir())


def test_card_round_trips_and_refuses_unknown_keys(tmp_path: Path) -> None:
    card = WeightsCard(model="m", task="classify", num_classes=2, class_names=["a", "b"], imgsz=(32, 48),
                       preprocess={"imgsz": [32, 48]}, metric={"top1": 0.5})
    assert WeightsCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card
    with pytest.raises(WeightsError, match="unknown weights-card keys"):
        WeightsCard.from_dict({**card.to_dict(), "colour": "red"})
    assert card_path(tmp_path / "a.b.safetensors") == tmp_path / "a.b.json"
    assert read_card(tmp_path / "none.safetensors") is None


def test_task_table_holds_classify_and_segment() -> None:
    assert get_task_trainer("classify") is ClassificationTrainer
    assert get_task_trainer(Task.SEGMENT) is SegmentationTrainer
    with pytest.raises(ValueError, match="registered twice"):
        register_task_trainer(Task.CLASSIFY)(type("Other", (ClassificationTrainer,), {}))


@pytest.mark.parametrize(("kw", "message"), [
    ({"out": Path("w.pt")}, "must end in .safetensors"),
    ({"optimizer": "adam"}, "Did you mean 'adamw'"),
    ({"epochs": 0}, "epochs=0"),
    ({"lr": 0.0}, "lr=0.0"),
])
def test_config_refuses_bad_options(kw: dict[str, object], message: str) -> None:
    with pytest.raises(TrainError, match=message):
        _config(Path("data"), **{"out": Path("w.safetensors"), **kw})  # type: ignore[arg-type]


def test_command_line_names_every_set_option() -> None:
    cfg = _config(Path("d"), Path("w.safetensors"), seed=3)
    assert cfg.command_line() == ("edgekit train --model shufflenetv2-0.5 --data d --out w.safetensors "
                                  "--epochs 1 --imgsz 32 --batch 6 --seed 3 --threads 1")


def test_data_of_another_task_is_refused(tiny_cls: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="classify dataset but lpsnet-s is a segment model"):
        train(_config(tiny_cls, tmp_path / "w.safetensors", model="lpsnet-s"))


def test_same_seed_gives_identical_weights_and_another_seed_does_not(tiny_cls: Path, tmp_path: Path) -> None:
    # One step each (6 images, batch 6): init, data order, flips and the update are all seeded.
    runs = {name: train(_config(tiny_cls, tmp_path / f"{name}.safetensors", seed=seed))
            for name, seed in (("a", 1), ("b", 1), ("c", 2))}
    states = {name: load_weights(get_spec("shufflenetv2-0.5").build(num_classes=6), r.weights).state_dict()
              for name, r in runs.items()}
    assert all(torch.equal(states["a"][k], states["b"][k]) for k in states["a"])
    assert not all(torch.equal(states["a"][k], states["c"][k]) for k in states["a"])
    assert runs["a"].losses == runs["b"].losses
    assert not torch.are_deterministic_algorithms_enabled()  # the run restored global state


def test_card_records_the_run_and_the_data_seed(tiny_cls: Path, tmp_path: Path) -> None:
    result = train(_config(tiny_cls, tmp_path / "w.safetensors", val=tiny_cls))
    card = read_card(result.weights)
    assert card is not None and result.card == tmp_path / "w.json"
    assert (card.model, card.task, card.num_classes, card.imgsz) == ("shufflenetv2-0.5", "classify", 6, (32, 32))
    assert card.class_names == ["circle", "ellipse", "hexagon", "square", "star", "triangle"]
    assert card.preprocessing().imgsz == (32, 32) and card.preprocess["resize"] == "stretch"
    assert card.train["lr"] == ClassificationTrainer.defaults.lr  # defaults resolved, not None
    assert card.train["data_synth"]["seed"] == 7
    assert card.command == _config(tiny_cls, tmp_path / "w.safetensors", val=tiny_cls).command_line()
    assert card.epochs_done == 1 and len(card.losses) == 1 and card.losses[0]["ce"] > 0
    assert card.metric is not None and 0.0 <= card.metric["top1"] <= 1.0 and card.metric["images"] == 6


def test_recorded_command_parses_back_into_the_same_config() -> None:
    import typer.main

    from edgekit.cli import app

    cfg = TrainConfig(model="bisenet", data=Path("d"), out=Path("w.safetensors"), epochs=3, imgsz=64, batch=4,
                      lr=0.01, optimizer="sgd", weight_decay=0.0, warmup_epochs=0.5, seed=9, num_classes=7,
                      limit=50, threads=1, val=Path("v"), init=Path("i.safetensors"))
    args = cfg.command_line().split()[2:]
    params = typer.main.get_command(app).commands["train"].make_context("train", args).params  # type: ignore[attr-defined]
    rebuilt = TrainConfig(**params, progress=cfg.progress)
    assert rebuilt == cfg


def test_init_starts_from_the_file_and_refuses_another_architecture(tiny_cls: Path, tmp_path: Path) -> None:
    first = train(_config(tiny_cls, tmp_path / "a.safetensors", seed=1)).weights
    # A near-zero learning rate: the convolutions leave the run as they came from --init (fp16 round trip).
    again = train(_config(tiny_cls, tmp_path / "b.safetensors", seed=2, lr=1e-12, weight_decay=0.0,
                          init=first)).weights
    fresh = train(_config(tiny_cls, tmp_path / "c.safetensors", seed=2, lr=1e-12, weight_decay=0.0)).weights
    build = get_spec("shufflenetv2-0.5").build
    a, b, c = (load_weights(build(num_classes=6), w).state_dict() for w in (first, again, fresh))
    convs = [k for k in a if k.endswith(".weight") and a[k].dim() == 4]
    assert convs and all(torch.equal(a[k], b[k]) for k in convs)
    assert not any(torch.equal(a[k], c[k]) for k in convs)
    with pytest.raises(TrainError, match="lack .* weight"):
        train(_config(tiny_cls, tmp_path / "d.safetensors", model="mobilenetv2", init=first))
    with pytest.raises(TrainError, match="shape mismatch"):  # same keys, other widths
        train(_config(tiny_cls, tmp_path / "d.safetensors", model="shufflenetv2-1.0", init=first))
    with pytest.raises(TrainError, match="do not exist"):
        train(_config(tiny_cls, tmp_path / "e.safetensors", init=tmp_path / "missing.safetensors"))
