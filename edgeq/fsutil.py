"""Atomic output: write next to the destination, then rename, so a failure never leaves half a file."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import OutputError


def check_output(path: str | os.PathLike, force: bool, is_dir: bool = False) -> Path:
    """Validate an output path before any work starts (never replace a file with a folder or back)."""
    path = Path(path)
    if path.exists() and path.is_dir() != is_dir:
        kind = "folder" if path.is_dir() else "file"
        raise OutputError(f"{path} is an existing {kind}; choose another output path.")
    if path.exists() and not force:
        raise OutputError(f"{path} already exists; pass --force to replace it.")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {parent} does not exist.")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {path}: folder {parent} is not writable.")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; on success move it onto ``path``, on failure remove it."""
    path = Path(path)
    parent = path.resolve().parent
    try:
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}.") from None
    tmp = tmp_dir / path.name
    if is_dir:
        tmp.mkdir()
    try:
        yield tmp
        _replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _replace(src: Path, dst: Path) -> None:
    if dst.is_dir() and not dst.is_symlink():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
