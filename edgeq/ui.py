"""Progress display: rich progress bars on a terminal, silence in --json mode or when piped."""
from __future__ import annotations

import contextlib
import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_ENABLED = True


def set_progress(enabled: bool) -> None:
    global _ENABLED
    _ENABLED = enabled


def progress_enabled() -> bool:
    return _ENABLED and sys.stderr.isatty()


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    if not progress_enabled():
        yield from items
        return
    from rich.progress import track as rich_track
    yield from rich_track(items, description=description, total=total, transient=True)


@contextlib.contextmanager
def status(message: str):
    if not progress_enabled():
        yield
        return
    from rich.console import Console
    with Console(stderr=True).status(message):
        yield


@contextlib.contextmanager
def progress(total: int, description: str):
    """A bar with a free text field (e.g. the current loss); yields update(advance, text). No-op when off."""
    if not progress_enabled():
        yield lambda advance=1, text=None: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[text]}"),
               TimeRemainingColumn())
    with Progress(*columns, transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total, text="")
        yield lambda advance=1, text=None: bar.update(task, advance=advance, **({"text": text} if text else {}))


def log(message: str) -> None:
    """One line on stderr for long stages (kept in logs when not on a terminal); silent in --json mode."""
    if _ENABLED:
        print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet():
    """No progress or log lines inside (nested stages that would fight the outer display)."""
    global _ENABLED
    before, _ENABLED = _ENABLED, False
    try:
        yield
    finally:
        _ENABLED = before
