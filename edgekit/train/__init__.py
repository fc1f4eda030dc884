"""The small trainer that fits zoo models on synthetic (or real) data: ``edgekit train``.

:mod:`edgekit.train.core` holds the loop and the per-task trainer table,
:mod:`edgekit.train.checkpoint` the fp16 weights and their JSON card;
each task registers its :class:`TaskTrainer` from its own module (classification,
segmentation, detection). Needs torch: host side only, never imported by the board SDK.
"""

from edgekit.train.checkpoint import WeightsCard, card_path, read_card, save_weights, write_card
from edgekit.train.core import (
    TaskDefaults,
    TaskTrainer,
    TrainConfig,
    TrainError,
    TrainResult,
    get_task_trainer,
    register_task_trainer,
    train,
)

__all__ = [
    "TaskDefaults", "TaskTrainer", "TrainConfig", "TrainError", "TrainResult", "WeightsCard", "card_path",
    "get_task_trainer", "read_card", "register_task_trainer", "save_weights", "train", "write_card",
]
