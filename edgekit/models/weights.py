"""Loading weights safely: ``torch.load(weights_only=True)`` or safetensors, never a bare pickle."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from edgekit.errors import WeightsError

_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "module")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or ``.pt/.pth/.bin`` (tensors only).

    Checkpoints that wrap the weights (``{"state_dict": ...}``, ``{"model": ...}``) are
    unwrapped, and a ``module.`` prefix left by DataParallel is stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file '{path}' does not exist.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"'{path}' is not a readable safetensors file: {exc}") from exc
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise WeightsError(
                f"'{path}' holds Python objects beyond tensors, which edgekit refuses to "
                "unpickle (torch.load weights_only=True). Re-save only the state dict: "
                "torch.save(model.state_dict(), 'weights.pt'), or convert to .safetensors."
                f" Loader said: {str(exc).splitlines()[0]}"
            ) from exc
        except (RuntimeError, EOFError, OSError) as exc:
            raise WeightsError(f"'{path}' is not a readable PyTorch checkpoint: {exc}") from exc
    return _unwrap(state, path)


def _unwrap(state: object, path: Path) -> dict[str, torch.Tensor]:
    for key in _CONTAINER_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"'{path}' does not contain a state dict of tensors.")
    prefix = "module."
    if state and all(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def load_weights(model: nn.Module, path: str | Path, *, strict: bool = True) -> nn.Module:
    """Load weights into ``model`` in place; a mismatch raises a readable diff.

    Floating-point tensors are cast to the model's dtype (fixtures ship as fp16).
    """
    state = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if wrong_shape or (strict and (missing or unexpected)):
        raise WeightsError(_mismatch_message(path, missing, unexpected, wrong_shape))
    cast = {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in state.items() if k in own}
    model.load_state_dict(cast, strict=strict)
    return model


def _mismatch_message(path: str | Path, missing: list[str], unexpected: list[str], wrong: list[str]) -> str:
    def block(title: str, items: list[str]) -> str:
        if not items:
            return ""
        shown = "\n".join(f"    {i}" for i in items[:10])
        more = f"\n    ... and {len(items) - 10} more" if len(items) > 10 else ""
        return f"\n  {title} ({len(items)}):\n{shown}{more}"

    return (
        f"weights in '{path}' do not fit this architecture:"
        + block("missing in file", missing)
        + block("unexpected in file", unexpected)
        + block("shape mismatch", wrong)
        + "\n  Check that the weights were trained for this model name and num_classes."
    )
