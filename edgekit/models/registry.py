"""The model registry: ``@register_model`` on a factory, ``get_model(name)`` to build one.

CLI choices, ``edgekit models`` and the parametrized tests all come from this table, so
registering a model is enough for it to be listed and tested.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from torch import nn

from edgekit.errors import UnknownModelError, suggest


class Task(str, Enum):
    """What a model's outputs mean."""

    CLASSIFY = "classify"
    DETECT = "detect"
    SEGMENT = "segment"


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    Args:
        name: kebab-case registry name, e.g. ``thundernet-snet146``.
        task: what the outputs mean.
        input_size: (height, width) the published figures were measured at.
        num_classes: default number of classes (ImageNet 1000, COCO 80, Cityscapes 19 ...).
        factory: builds the ``nn.Module``; takes ``num_classes`` and model-specific keywords.
        source: the paper (and table) the architecture and its size figures come from.
        params_m: published parameter count in millions, or None where the paper gives none.
        macs_g: published multiply-accumulates in G at ``input_size``, or None.
        tolerance: allowed relative deviation of our counts from the published ones.
    """

    name: str
    task: Task
    input_size: tuple[int, int]
    num_classes: int
    factory: Callable[..., nn.Module]
    source: str
    params_m: float | None = None
    macs_g: float | None = None
    tolerance: float = 0.05
    summary: str = field(default="")

    def build(self, **kwargs: object) -> nn.Module:
        """Build the model; keyword arguments go to the factory."""
        kwargs.setdefault("num_classes", self.num_classes)
        return self.factory(**kwargs)


_MODELS: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    task: Task | str,
    input_size: tuple[int, int],
    num_classes: int,
    source: str,
    params_m: float | None = None,
    macs_g: float | None = None,
    tolerance: float = 0.05,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model factory under ``name`` (decorator)."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model '{name}' is registered twice")
        doc = (factory.__doc__ or "").strip().splitlines()
        _MODELS[name] = ModelSpec(
            name=name,
            task=Task(task),
            input_size=input_size,
            num_classes=num_classes,
            factory=factory,
            source=source,
            params_m=params_m,
            macs_g=macs_g,
            tolerance=tolerance,
            summary=doc[0] if doc else "",
        )
        return factory

    return wrap


def _load_zoo() -> None:
    # Importing the zoo package runs every @register_model.
    import edgekit.models.zoo  # noqa: F401


def list_models(pattern: str = "*", task: Task | str | None = None) -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (and ``task``), sorted."""
    _load_zoo()
    return sorted(
        n
        for n, s in _MODELS.items()
        if fnmatch.fnmatch(n, pattern) and (task is None or s.task == Task(task))
    )


def get_spec(name: str) -> ModelSpec:
    """The spec of a registered model; an unknown name lists what exists."""
    _load_zoo()
    if name not in _MODELS:
        names = sorted(_MODELS)
        raise UnknownModelError(
            f"model '{name}' is not registered.{suggest(name, names)} "
            f"Available: {', '.join(names)}. "
            "For your own network pass 'path/to/file.py:factory'."
        )
    return _MODELS[name]


def get_model(name: str, **kwargs: object) -> nn.Module:
    """Build a registered model in eval mode."""
    return get_spec(name).build(**kwargs).eval()
