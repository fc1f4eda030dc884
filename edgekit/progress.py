"""Progress on the terminal (rich, imported on use): ``track``, an iterable with a transient bar; ``step``, one line
per stage of a longer run."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def track(items: Iterable[T], label: str, *, enabled: bool = True, total: int | None = None) -> Iterator[T]:
    """Yield ``items`` unchanged, advancing a progress bar called ``label`` when ``enabled``.

    ``total`` defaults to ``len(items)`` where the iterable has one. The bar disappears when
    done (transient), so a run's output stays its results.
    """
    if not enabled:
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task(label, total=total)
        for item in items:
            yield item
            bar.advance(task)


def step(message: str, *, enabled: bool = True) -> None:
    """Print ``message`` as one progress line (a stage of a longer run, such as one candidate) when ``enabled``."""
    if enabled:
        from rich.console import Console

        Console().print(message, highlight=False, soft_wrap=True)
