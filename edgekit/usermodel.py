"""A user's own network: ``path/to/file.py:factory`` loaded as a module, the factory called.

The file is executed under a module name unique to its path (two files both called
``model.py`` do not collide), with its folder on ``sys.path`` while it runs so it can import
its neighbours. The factory is called with no arguments, or with ``num_classes=N`` when a
class count is given; it must return an ``nn.Module``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from edgekit.errors import EdgekitError


class UserModelError(EdgekitError):
    """A ``file.py:factory`` reference that cannot be loaded or does not build a module."""


@dataclass(frozen=True)
class UserModelRef:
    """A parsed ``path/to/file.py:factory`` reference."""

    path: Path
    factory: str

    @property
    def name(self) -> str:
        """Name recorded in manifests: ``file:factory``."""
        return f"{self.path.stem}:{self.factory}"


def is_user_model_ref(text: str) -> bool:
    """True when ``text`` looks like ``something.py:factory`` rather than a registry name."""
    path, sep, factory = text.rpartition(":")
    return bool(sep) and path.endswith(".py") and factory.isidentifier()


def parse_user_model_ref(text: str) -> UserModelRef:
    """Split ``path/to/file.py:factory``; the file must exist."""
    if not is_user_model_ref(text):
        raise UserModelError(
            f"'{text}' is not a model reference of the form 'path/to/file.py:factory' "
            "(a .py file, a colon, then the name of a function that returns an nn.Module)."
        )
    path, _, factory = text.rpartition(":")
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise UserModelError(f"model file '{path}' does not exist (resolved to '{resolved}').")
    return UserModelRef(path=resolved, factory=factory)


def load_user_model(text: str, num_classes: int | None = None) -> nn.Module:
    """Build the network of a ``path/to/file.py:factory`` reference."""
    ref = parse_user_model_ref(text)
    module_name = "edgekit_user_" + hashlib.sha1(str(ref.path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, ref.path)
    if spec is None or spec.loader is None:
        raise UserModelError(f"'{ref.path}' cannot be imported as a Python module.")
    module = importlib.util.module_from_spec(spec)
    # Registered before running so dataclasses and pickling inside the file can find it.
    sys.modules[module_name] = module
    sys.path.insert(0, str(ref.path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise UserModelError(f"importing '{ref.path}' failed: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(str(ref.path.parent))
    factory = getattr(module, ref.factory, None)
    if factory is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                        and getattr(v, "__module__", None) == module_name)
        raise UserModelError(
            f"'{ref.path.name}' has no attribute '{ref.factory}'. Callables defined there: "
            f"{', '.join(public) or 'none'}."
        )
    if not callable(factory):
        raise UserModelError(f"'{ref.path.name}:{ref.factory}' is a {type(factory).__name__}, not a callable factory.")
    model = factory(**_factory_kwargs(factory, ref, num_classes))
    if not isinstance(model, nn.Module):
        raise UserModelError(
            f"'{ref.path.name}:{ref.factory}' returned a {type(model).__name__}; it must return a torch.nn.Module."
        )
    return model


def _factory_kwargs(factory: object, ref: UserModelRef, num_classes: int | None) -> dict[str, int]:
    if num_classes is None:
        return {}
    try:
        params = inspect.signature(factory).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return {"num_classes": num_classes}
    takes = "num_classes" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    if not takes:
        raise UserModelError(
            f"'{ref.path.name}:{ref.factory}' takes no 'num_classes' argument; drop --num-classes "
            "or add the parameter to the factory."
        )
    return {"num_classes": num_classes}
