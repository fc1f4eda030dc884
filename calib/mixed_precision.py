"""The mixed-precision search: the fewest float layers that bring the task-metric drop within a budget.

Given units ranked most sensitive first (:mod:`edgekit.calib.sensitivity`) and a function that
measures the drop of any float set, ``search_float_set``:

1. measures full INT8; within the budget, nothing stays float;
2. grows a prefix of the ranking (1, 2, 4, 8... units, each a set of nodes) until the drop
   is within budget, then bisects between the last prefix that failed and the first that
   passed (the drop is not strictly monotone in the prefix, so this finds *a* short passing
   prefix with ``log2`` evaluations, not a proof of the shortest);
3. prunes: tries to return each float node to INT8, least sensitive first, and keeps every
   removal that stays within budget, so no node of the result can go back on its own.

When even every unit float misses the budget, the result is FAIL with the best plan found
(the lowest drop measured, the fewer float nodes on a tie). Items are opaque (node ids, or
``(role, node)`` pairs across a pipeline's graphs); ``apply_float_set`` writes one graph's
float nodes into its recipe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import onnx

from edgekit.calib.placement import plan_placement
from edgekit.calib.profiles import resolve_profile
from edgekit.calib.recipe import Precision, QuantRecipe

_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Trial:
    """One evaluated float set: its size, drop (points) and which stage asked for it."""

    stage: str
    float_count: int
    drop: float
    within: bool


@dataclass(frozen=True)
class SearchResult:
    """The float set the search settled on.

    Args:
        float_items: items kept float, most sensitive first.
        drop_int8: the full-INT8 drop in points.
        drop: the drop with ``float_items`` float.
        budget: the budget in points.
        passed: ``drop`` is within the budget.
        trials: every evaluation, in order.
        seconds: wall time of the search.
    """

    float_items: tuple[Hashable, ...]
    drop_int8: float
    drop: float
    budget: float
    passed: bool
    trials: tuple[Trial, ...] = field(default=())
    seconds: float = 0.0

    @property
    def evaluations(self) -> int:
        """Float sets measured."""
        return len(self.trials)


def search_float_set(ranked_units: Sequence[Collection[Hashable]], drop_of: Callable[[frozenset[Hashable]], float],
                     budget: float, *, prune: bool = True) -> SearchResult:
    """The fewest float items (greedy over ``ranked_units``, then pruned) with ``drop_of(items) <= budget``.

    Args:
        ranked_units: node sets, most sensitive first.
        drop_of: the task-metric drop (points) with a set of items kept float.
        budget: the largest acceptable drop.
        prune: try to return each float item to INT8 after the prefix search.
    """
    start = time.perf_counter()
    order: list[Hashable] = list(dict.fromkeys(item for unit in ranked_units for item in unit))
    trials: list[Trial] = []
    seen: dict[frozenset[Hashable], float] = {}

    def measure(items: Iterable[Hashable], stage: str) -> float:
        key = frozenset(items)
        if key not in seen:
            seen[key] = float(drop_of(key))
            trials.append(Trial(stage, len(key), round(seen[key], 4), seen[key] <= budget + _TOLERANCE))
        return seen[key]

    def done(items: Iterable[Hashable]) -> SearchResult:
        key = frozenset(items)
        ordered = tuple(i for i in order if i in key)
        return SearchResult(ordered, round(drop_int8, 4), round(seen[key], 4), budget,
                            seen[key] <= budget + _TOLERANCE, tuple(trials), round(time.perf_counter() - start, 3))

    drop_int8 = measure((), "int8")
    if drop_int8 <= budget + _TOLERANCE or not ranked_units:
        return done(())
    prefixes = _prefixes(ranked_units)
    passing, failing, k = None, 0, 1
    while passing is None:
        k = min(k, len(prefixes))
        if measure(prefixes[k - 1], "grow") <= budget + _TOLERANCE:
            passing = k
        elif k == len(prefixes):
            break
        else:
            failing, k = k, 2 * k
    if passing is None:
        best = min(seen, key=lambda s: (round(seen[s], 6), len(s)))
        return done(best)
    while passing - failing > 1:
        mid = (passing + failing) // 2
        if measure(prefixes[mid - 1], "bisect") <= budget + _TOLERANCE:
            passing = mid
        else:
            failing = mid
    chosen = set(prefixes[passing - 1])
    if prune:
        for item in [i for i in reversed(order) if i in chosen]:
            if len(chosen) > 1 and measure(chosen - {item}, "prune") <= budget + _TOLERANCE:
                chosen.discard(item)
    measure(chosen, "final")
    return done(chosen)


def _prefixes(ranked_units: Sequence[Collection[Hashable]]) -> list[frozenset[Hashable]]:
    """Cumulative unions of the ranked units, each strictly larger than the one before."""
    out: list[frozenset[Hashable]] = []
    current: frozenset[Hashable] = frozenset()
    for unit in ranked_units:
        grown = current | frozenset(unit)
        if grown != current:
            out.append(grown)
            current = grown
    return out


def apply_float_set(model: onnx.ModelProto, recipe: QuantRecipe, float_nodes: Iterable[str],
                    precision: Precision) -> QuantRecipe:
    """The recipe with ``float_nodes`` at ``precision`` and every tensor no INT8 node reads marked float too.

    Raises:
        ValueError: ``precision`` is INT8, or a node id is not in ``model``.
    """
    from edgekit.calib.placement import node_id

    if precision is Precision.INT8:
        raise ValueError("float layers are kept at fp16 or fp32, not int8")
    known = {node_id(n, i) for i, n in enumerate(model.graph.node)}
    nodes = sorted(set(float_nodes))
    unknown = [n for n in nodes if n not in known]
    if unknown:
        raise ValueError(f"node(s) {', '.join(unknown[:3])} are not in the graph the recipe was calibrated on")
    from edgekit.calib.sensitivity import complete_recipe

    layer_precision = {**recipe.layer_precision, **{n: precision for n in nodes}}
    completed = complete_recipe(model, recipe.replace(layer_precision=layer_precision))
    placement = plan_placement(model, resolve_profile(recipe.profile), frozenset(layer_precision))
    placed = set(placement.activations) | set(placement.weights)
    tensors = {name: quant if name in placed else replace(quant, precision=precision)
               for name, quant in completed.tensors.items()}
    return completed.replace(tensors=tensors)
