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
