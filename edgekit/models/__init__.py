"""Model zoo and registry."""

from edgekit.models.registry import ModelSpec, Task, get_model, get_spec, list_models, register_model

__all__ = ["ModelSpec", "Task", "get_model", "get_spec", "list_models", "register_model"]
