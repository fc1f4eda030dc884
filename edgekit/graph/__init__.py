"""ONNX graph passes: small pure functions ``ModelProto -> ModelProto`` run in a declared order.

``optimize(model)`` runs ``PASSES`` and returns the optimized model with a ``PassRecord`` per
pass (node counts per op type before and after, what changed).
"""

from edgekit.graph.cleanup import cleanup
from edgekit.graph.fold_batchnorm import fold_batchnorm
from edgekit.graph.fuse_channel_shuffle import fuse_channel_shuffle
from edgekit.graph.remove_concat_split import remove_concat_split
from edgekit.graph.runner import PASSES, GraphPass, PassRecord, optimize

__all__ = [
    "PASSES",
    "GraphPass",
    "PassRecord",
    "cleanup",
    "fold_batchnorm",
    "fuse_channel_shuffle",
    "optimize",
    "remove_concat_split",
]
