"""The small trainer every task shares: seeding, optimizer and schedule, the epoch loop,
fp16 safetensors checkpoints with a JSON card, and the per-task trainer table.

Adding a task (the extension interface)
---------------------------------------
A task plugs in one :class:`TaskTrainer` subclass, registered from its own module; the
modules listed in :data:`TASK_MODULES` are imported on first lookup::

    # edgekit/train/detection.py
    from edgekit.models.registry import Task
    from edgekit.train.core import TaskDefaults, TaskTrainer, register_task_trainer

    @register_task_trainer(Task.DETECT)
    class DetectionTrainer(TaskTrainer):
        defaults = TaskDefaults(imgsz=320, batch=8, lr=1e-3)

        def prepare_sample(self, sample: DetectionSample) -> object:   # optional
            ...   # decode/resize once; the result is cached per index

        def make_batch(self, indices: Sequence[int], rng: np.random.Generator) -> object:
            ...   # self.sample(i) for i in indices -> tensors/targets, augmented with rng only

        def loss(self, model: nn.Module, batch: object) -> dict[str, Tensor]:
            ...   # named scalar losses; the trainer minimises their sum

What :func:`train` does with it, in order:

1. opens ``config.data`` with :func:`edgekit.data.open_dataset` (``num_classes`` from the
   dataset unless given), seeds Python, numpy and torch from ``config.seed``;
2. ``trainer = cls(dataset, preprocess, spec, num_classes)``, where ``preprocess`` is
   ``cls.default_preprocess(imgsz)`` (override it for another normalisation or resize);
3. ``model = trainer.build_model()`` (override, e.g. to build auxiliary heads), in train mode;
4. each epoch draws a permutation of the dataset from one ``numpy`` generator, cuts it into
   batches of ``config.batch`` indices (the remainder is dropped so BatchNorm always sees a
   full batch) and calls ``make_batch`` then ``loss``; AdamW or SGD, linear warm-up then a
   cosine decay per step, gradient-norm clipping;
5. after every epoch ``trainer.export_state(model)`` (default: the keys of the model as the
   registry builds it, so training-only heads are dropped and strict loading works) is written
   as fp16 safetensors through a temporary file and a rename, with a :class:`WeightsCard`
   beside it (``W.safetensors`` -> ``W.json``).

Everything random goes through ``rng`` or torch's seeded generator, so one seed and one
thread count give bit-identical weights.
"""

from __future__ import annotations

import importlib
import json
import math
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn
from torch import Tensor, nn

from edgekit.data import ImageDataset, Preprocess, open_dataset
from edgekit.errors import EdgekitError, suggest
from edgekit.models.registry import ModelSpec, Task, get_spec
from edgekit.models.weights import WeightsError, load_weights, read_state_dict
from edgekit.train.checkpoint import WeightsCard, card_path, save_weights, write_card

# Modules that register a TaskTrainer (and an evaluator) when imported.
TASK_MODULES: tuple[str, ...] = (
    "edgekit.train.classification",
    "edgekit.train.segmentation",
    "edgekit.train.detection",
)


class TrainError(EdgekitError):
    """Training options or data that cannot work (the message says which to change)."""


@dataclass(frozen=True)
class TaskDefaults:
    """What a task trains with unless the user says otherwise.

    Args:
        imgsz: square input side in pixels.
        batch: images per step.
        lr: peak learning rate (after warm-up).
        optimizer: ``adamw`` or ``sgd`` (momentum 0.9, Nesterov).
        weight_decay: applied to conv/linear weights only, never to norms and biases.
        warmup_epochs: linear warm-up length (capped at a quarter of the run).
        grad_clip: max gradient L2 norm, or None.
    """

    imgsz: int = 224
    batch: int = 32
    lr: float = 2e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    grad_clip: float | None = 10.0


@dataclass(frozen=True)
class TrainConfig:
    """One training run; the CLI and the Python API build the same object.

    Args:
        model: registered model name.
        data: training dataset (any layout :func:`edgekit.data.open_dataset` reads).
        out: weights file to write (``.safetensors``); the card goes to ``out`` with ``.json``.
        epochs: passes over the data.
        imgsz: square input side; None takes the task default.
        batch, lr, optimizer, weight_decay, warmup_epochs: None takes the task default.
        seed: seeds weights init, data order and augmentation.
        num_classes: None takes the dataset's class count.
        limit: train on a seeded random subset of this many images.
        threads: torch intra-op threads for the run (restored afterwards); None leaves it.
        val: held-out dataset evaluated once at the end; its metric goes into the card.
        init: weights to start from (a shipped fixture or an earlier run) instead of a fresh init;
            training-only modules the file lacks (auxiliary heads) keep their fresh init.
        progress: show rich progress bars (on stderr).
    """

    model: str
    data: Path
    out: Path
    epochs: int = 10
    imgsz: int | None = None
    batch: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    seed: int = 0
    num_classes: int | None = None
    limit: int | None = None
    threads: int | None = None
    val: Path | None = None
    init: Path | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        for name in ("val", "init"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        checks = (("epochs", self.epochs, 1), ("imgsz", self.imgsz, 32), ("batch", self.batch, 2),
                  ("num_classes", self.num_classes, 1), ("limit", self.limit, 2), ("threads", self.threads, 1))
        for name, value, least in checks:
            if value is not None and value < least:
                raise TrainError(f"{name}={value}: must be >= {least}")
        if self.lr is not None and not self.lr > 0:
            raise TrainError(f"lr={self.lr}: must be > 0")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise TrainError(f"optimizer '{self.optimizer}' is not known.{suggest(self.optimizer, OPTIMIZERS)} "
                             f"Choose one of {sorted(OPTIMIZERS)}.")
        if self.out.suffix != ".safetensors":
            raise TrainError(f"out '{self.out}' must end in .safetensors (weights ship as fp16 safetensors)")

    def command_line(self) -> str:
        """The ``edgekit train`` command that repeats this run (options left at None omitted)."""
        skip = {"progress"}  # the only field that cannot change the weights
        parts = ["edgekit", "train"]
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in skip and value is not None:
                parts += [f"--{f.name.replace('_', '-')}", str(value)]
        return " ".join(parts)


class TaskTrainer(ABC):
    """How one task turns dataset indices into batches and batches into losses.

    Subclasses set :attr:`defaults`, implement :meth:`make_batch` and :meth:`loss`, and
    register with :func:`register_task_trainer`. See the module docstring for the lifecycle.

    Args:
        dataset: the training set.
        preprocess: geometry and normalisation of the network input.
        spec: the registered model being trained.
        num_classes: classes the model is built with.
    """

    task: ClassVar[Task]
    defaults: ClassVar[TaskDefaults] = TaskDefaults()
    cache_samples: ClassVar[bool] = True  # keep prepared samples in memory across epochs

    def __init__(self, dataset: ImageDataset, preprocess: Preprocess, spec: ModelSpec, num_classes: int) -> None:
        self.dataset = dataset
        self.preprocess = preprocess
        self.spec = spec
        self.num_classes = num_classes
        self._cache: dict[int, Any] = {}

    @classmethod
    def default_preprocess(cls, imgsz: int) -> Preprocess:
        """The input pipeline at ``imgsz``: ImageNet mean/std, RGB, stretch to size."""
        return Preprocess(imgsz=(imgsz, imgsz))

    def build_model(self) -> nn.Module:
        """The network to train (the registry's build with ``num_classes``)."""
        return self.spec.build(num_classes=self.num_classes)

    def prepare_sample(self, sample: Any) -> Any:
        """Turn one loaded sample into what :meth:`make_batch` needs (cached per index)."""
        return sample

    def sample(self, index: int) -> Any:
        """Dataset item ``index`` after :meth:`prepare_sample`, decoded once per run."""
        if index in self._cache:
            return self._cache[index]
        prepared = self.prepare_sample(self.dataset[index])
        if self.cache_samples:
            self._cache[index] = prepared
        return prepared

    @abstractmethod
    def make_batch(self, indices: Sequence[int], rng: np.random.Generator) -> Any:
        """One training batch from dataset indices; augmentation draws from ``rng`` only."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        """Named scalar loss terms of ``model`` on ``batch``; the trainer minimises their sum."""

    def load_init(self, model: nn.Module, path: Path) -> None:
        """Start ``model`` from the weights in ``path`` (what :meth:`export_state` wrote).

        Every weight of the inference build must be in the file with its shape; only
        training-only modules may be missing, and they keep their fresh init.
        """
        if not path.is_file():
            raise TrainError(f"init weights '{path}' do not exist; give a .safetensors file written by edgekit train")
        with torch.device("meta"):
            reference = set(self.spec.build(num_classes=self.num_classes).state_dict())
        state = read_state_dict(path)
        lacking = sorted(reference - set(state))
        if lacking:
            raise TrainError(f"init weights '{path}' lack {len(lacking)} weight(s) of {self.spec.name} with "
                             f"{self.num_classes} classes (first: {lacking[:3]}); were they trained for this "
                             "model and class count?")
        try:
            load_weights(model, path, strict=False)
        except WeightsError as exc:
            raise TrainError(str(exc)) from exc

    def export_state(self, model: nn.Module) -> dict[str, Tensor]:
        """The weights to ship: the keys of the model as the registry builds it by default.

        Training-only modules (auxiliary heads) are dropped, so the file loads with
        ``strict=True`` into ``get_spec(name).build(num_classes=...)``.
        """
        with torch.device("meta"):
            reference = self.spec.build(num_classes=self.num_classes).state_dict()
        state = model.state_dict()
        missing = sorted(set(reference) - set(state))
        if missing:
            raise TrainError(f"the trained {self.spec.name} lacks weights of its inference build: {missing[:5]}")
        return {k: state[k] for k in reference}


T = TypeVar("T", bound=type[TaskTrainer])
_TRAINERS: dict[Task, type[TaskTrainer]] = {}


def register_task_trainer(task: Task | str) -> Callable[[T], T]:
    """Register a :class:`TaskTrainer` subclass for ``task`` (class decorator)."""

    def wrap(cls: T) -> T:
        key = Task(task)
        if key in _TRAINERS and _TRAINERS[key] is not cls:
            raise ValueError(f"a trainer for task '{key.value}' is registered twice")
        cls.task = key
        _TRAINERS[key] = cls
        return cls

    return wrap


def load_task_modules() -> None:
    """Import the modules of :data:`TASK_MODULES` so their trainers and evaluators register.

    A task module that does not exist yet is skipped (its task then reports "no trainer");
    an import error inside an existing module is raised.
    """
    for name in TASK_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


def get_task_trainer(task: Task | str) -> type[TaskTrainer]:
    """The trainer class registered for ``task``."""
    load_task_modules()
    key = Task(task)
    if key not in _TRAINERS:
        have = ", ".join(sorted(t.value for t in _TRAINERS)) or "none"
        raise TrainError(f"no trainer is registered for task '{key.value}' (trainers exist for: {have})")
    return _TRAINERS[key]


@dataclass
class TrainResult:
    """What a run produced.

    Args:
        weights: the fp16 safetensors file.
        card: its JSON card.
        losses: mean loss terms per epoch.
        wall_s: training wall time (without the final evaluation).
        metric: the held-out evaluation, if ``val`` was given.
    """

    weights: Path
    card: Path
    losses: list[dict[str, float]]
    wall_s: float
    metric: dict[str, Any] | None = None


def train(config: TrainConfig) -> TrainResult:
    """Train ``config.model`` on ``config.data`` and write fp16 weights plus a card."""
    spec = get_spec(config.model)
    cls = get_task_trainer(spec.task)
    d = cls.defaults
    dataset, num_classes = _training_set(config, spec)
    batch = min(config.batch or d.batch, len(dataset))
    if batch < 2:
        raise TrainError(f"'{config.data}' has {len(dataset)} image(s); training needs at least 2 per batch")
    imgsz = config.imgsz or d.imgsz
    steps = len(dataset) // batch
    with _run_context(config.seed, config.threads):
        trainer = cls(dataset, cls.default_preprocess(imgsz), spec, num_classes)
        model = trainer.build_model().train()
        if config.init is not None:
            trainer.load_init(model, config.init)
        optimizer = make_optimizer(model, config.optimizer or d.optimizer, config.lr or d.lr,
                                   d.weight_decay if config.weight_decay is None else config.weight_decay)
        warmup = d.warmup_epochs if config.warmup_epochs is None else config.warmup_epochs
        schedule = warmup_cosine(optimizer, steps * config.epochs, round(warmup * steps))
        card = WeightsCard(model=spec.name, task=spec.task.value, num_classes=num_classes,
                           class_names=list(dataset.class_names)[:num_classes], imgsz=trainer.preprocess.imgsz,
                           preprocess=trainer.preprocess.to_dict(), train=_config_dict(config, d, batch, imgsz),
                           command=config.command_line())
        rng = np.random.default_rng(config.seed)
        start = time.perf_counter()
        with progress_bar(config.progress) as bar:
            logged = -(-steps // 10) if config.progress and not bar.console.is_terminal else 0
            for epoch in range(1, config.epochs + 1):
                task_id = bar.add_task(f"epoch {epoch}/{config.epochs}", total=steps, losses="")
                sums: dict[str, float] = {}
                for step, indices in enumerate(epoch_batches(len(dataset), batch, rng), 1):
                    terms = train_step(trainer, model, optimizer, trainer.make_batch(indices, rng), d.grad_clip)
                    schedule.step()
                    sums = {k: sums.get(k, 0.0) + v for k, v in terms.items()}
                    bar.update(task_id, advance=1, losses=_format_losses({k: v / step for k, v in sums.items()}))
                    if logged and step % logged == 0 and step < steps:  # no live bar in a log file: a line per 10 %
                        bar.console.print(f"epoch {epoch}/{config.epochs} step {step}/{steps} "
                                          f"({time.perf_counter() - start:.0f} s): "
                                          f"{_format_losses({k: v / step for k, v in sums.items()})}", highlight=False)
                card.losses.append({k: v / steps for k, v in sums.items()})
                card.epochs_done, card.wall_s = epoch, round(time.perf_counter() - start, 1)
                if config.progress:  # one line per epoch stays in the scrollback and in logs
                    bar.console.print(f"epoch {epoch}/{config.epochs} ({card.wall_s:.0f} s): "
                                      f"{_format_losses(card.losses[-1])}", highlight=False)
                save_weights(trainer.export_state(model), config.out, metadata={"model": spec.name})
                write_card(card, config.out)
        if config.val is not None:
            from edgekit.evaluate import evaluate

            # Score the file as shipped (fp16, inference build, strict load), not the live model.
            card.metric = evaluate(spec.name, config.out, config.val, progress=config.progress)
            write_card(card, config.out)
    return TrainResult(config.out, card_path(config.out), card.losses, card.wall_s, card.metric)


def _training_set(config: TrainConfig, spec: ModelSpec) -> tuple[ImageDataset, int]:
    """The (limited) training dataset and the number of classes to build the model with."""
    dataset = open_dataset(config.data)
    if dataset.task != spec.task.value:
        raise TrainError(f"'{config.data}' is a {dataset.task or 'unlabelled'} dataset but {spec.name} "
                         f"is a {spec.task.value} model; pick data of the model's task")
    if config.limit is not None:
        dataset = dataset.shuffle(config.seed).take(config.limit)
    num_classes = config.num_classes or dataset.num_classes
    if not num_classes:
        raise TrainError(f"'{config.data}' does not name its classes; pass num_classes")
    return dataset, num_classes


def _format_losses(losses: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in losses.items())


def train_step(trainer: TaskTrainer, model: nn.Module, optimizer: torch.optim.Optimizer, batch: Any,
               grad_clip: float | None) -> dict[str, float]:
    """One optimisation step; returns the loss terms (and ``loss``, their sum) as floats."""
    terms = trainer.loss(model, batch)
    total = sum(terms.values())
    if not torch.isfinite(total):
        raise TrainError(f"the loss became {total.item()} ({ {k: v.item() for k, v in terms.items()} }); "
                         "lower the learning rate (--lr)")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    out = {k: float(v.detach()) for k, v in terms.items()}
    if len(out) > 1:
        out["loss"] = float(total.detach())
    return out


def epoch_batches(n: int, batch: int, rng: np.random.Generator) -> Iterator[list[int]]:
    """A random permutation of ``range(n)`` in full batches (the remainder is dropped)."""
    order = rng.permutation(n)
    for i in range(n // batch):
        yield order[i * batch:(i + 1) * batch].tolist()


def _sgd(params: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)


def _adamw(params: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr)


OPTIMIZERS: dict[str, Callable[[list[dict[str, Any]], float], torch.optim.Optimizer]] = {
    "adamw": _adamw, "sgd": _sgd,
}


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """``name`` optimizer with weight decay on conv/linear weights only (not norms, not biases)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return OPTIMIZERS[name](groups, lr)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                  final_fraction: float = 0.01) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up from 10 % of the peak, then cosine to ``final_fraction``."""
    warmup_steps = min(warmup_steps, total_steps // 4)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.1 + 0.9 * step / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def progress_bar(enabled: bool = True) -> Progress:
    """A rich progress display on stderr (so JSON on stdout stays clean); silent when disabled.

    Tasks take a ``losses`` field (any text) shown after the bar.
    """
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[losses]}"),
                    console=Console(stderr=True), disable=not enabled)


@contextmanager
def _run_context(seed: int, threads: int | None) -> Iterator[None]:
    """Seed every generator and make torch deterministic for the run; restore global state after."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    random.seed(seed)
    torch.manual_seed(seed)
    if threads is not None:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det)
        torch.set_num_threads(old_threads)


def _config_dict(config: TrainConfig, defaults: TaskDefaults, batch: int, imgsz: int) -> dict[str, Any]:
    """The config with every default resolved to the value the run used."""
    out = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items() if k != "progress"}
    out.update({k: v for k, v in asdict(defaults).items() if out.get(k) is None})
    out.update(batch=batch, imgsz=imgsz)
    synth = config.data / "synth.json"  # a synthetic set says how to regenerate it
    if synth.is_file():
        out["data_synth"] = json.loads(synth.read_text())
    return out
