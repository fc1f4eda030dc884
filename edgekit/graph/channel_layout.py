"""Which channel sits where: the bookkeeping behind ``fuse_channel_shuffle``.

Every channel of a tensor that comes straight from a *source* (a conv output, a graph input,
the output of an op we do not look into) gets an id. A tensor is then described twice:

- ``labels``: in **logical** order, which source channel each of its channels is in the
  original graph (a shuffle permutes them, a Concat joins them, a Split selects them);
- ``positions``: in **physical** order, which source slot each of its channels reads in the
  rewritten graph, where shuffles are gone and splits read static (possibly strided) slices.

A *free* source (the output of a dense conv) may lay its channels out in any order, because
its weights can be permuted; a *fixed* one (graph input, opaque op) keeps its order. The
rewritten graph is right when every tensor holds the same set of source channels in both
descriptions. Each requirement ("the channels selected by this Split must be exactly the slots
that its static slice reads"; "this tensor must be in logical order here") refines a partition
of ids into classes; a label may go to a slot only within its class, so a requirement can be
met iff every class keeps as many labels as slots. ``solve`` then picks, per class, labels and
slots in ascending order, which is the identity wherever the identity is allowed.
"""

from __future__ import annotations

import numpy as np


class ChannelLayouts:
    """Source channel ids, the requirements on where they go, and the layout that meets them."""

    def __init__(self) -> None:
        self._label_class = np.zeros(0, np.int64)
        self._slot_class = np.zeros(0, np.int64)
        self._classes = 0

    @property
    def size(self) -> int:
        """Number of channel ids handed out."""
        return int(self._label_class.size)

    def source(self, channels: int, *, free: bool) -> np.ndarray:
        """Ids of a new source's channels (in its logical order, which is also slot order)."""
        base = self.size
        if free:  # one class: the channels may be laid out in any order
            cls = np.full(channels, self._classes, np.int64)
            self._classes += 1
        else:  # one class per channel: each stays where it is
            cls = np.arange(self._classes, self._classes + channels, dtype=np.int64)
            self._classes += channels
        self._label_class = np.concatenate([self._label_class, cls])
        self._slot_class = np.concatenate([self._slot_class, cls])
        return np.arange(base, base + channels, dtype=np.int64)

    def require_same_sets(self, labels: list[np.ndarray], slots: list[np.ndarray]) -> bool:
        """Require ``labels[k]`` to land exactly on ``slots[k]`` for every k.

        Returns False, changing nothing, when that contradicts earlier requirements.
        """
        if any(len(a) != len(b) for a, b in zip(labels, slots, strict=True)):
            return False
        label_flag = np.zeros(self.size, np.int64)
        slot_flag = np.zeros(self.size, np.int64)
        for k, (a, b) in enumerate(zip(labels, slots, strict=True)):
            label_flag[a] = k + 1
            slot_flag[b] = k + 1
        return self._refine(label_flag, slot_flag)

    def require_order(self, labels: np.ndarray, slots: np.ndarray) -> bool:
        """Require ``labels[j]`` to land on ``slots[j]`` for every j (a tensor read in logical order).

        Returns False, changing nothing, when that contradicts earlier requirements.
        """
        label_flag = np.zeros(self.size, np.int64)
        slot_flag = np.zeros(self.size, np.int64)
        label_flag[labels] = np.arange(1, len(labels) + 1)
        slot_flag[slots] = np.arange(1, len(slots) + 1)
        return self._refine(label_flag, slot_flag)

    def solve(self) -> np.ndarray:
        """``slot[label]`` for every id: a bijection meeting every accepted requirement."""
        ids = np.arange(self.size)
        by_label = np.lexsort((ids, self._label_class))
        by_slot = np.lexsort((ids, self._slot_class))
        slot = np.empty(self.size, np.int64)
        slot[by_label] = by_slot
        return slot

    def _refine(self, label_flag: np.ndarray, slot_flag: np.ndarray) -> bool:
        width = int(max(label_flag.max(initial=0), slot_flag.max(initial=0))) + 1
        keys = np.concatenate([self._label_class * width + label_flag, self._slot_class * width + slot_flag])
        _, inverse = np.unique(keys, return_inverse=True)
        label_class, slot_class = inverse[: self.size], inverse[self.size :]
        classes = int(inverse.max(initial=-1)) + 1
        if not np.array_equal(np.bincount(label_class, minlength=classes),
                              np.bincount(slot_class, minlength=classes)):
            return False
        self._label_class, self._slot_class, self._classes = label_class, slot_class, classes
        return True
