"""Importing the user's own Python files (model factories, metric functions) with one-sentence errors."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def import_file(path: Path, prefix: str, error: type[Exception], what: str):
    """Execute ``path`` as module ``<prefix>_<stem>``; a missing file or a failing import raises ``error``."""
    if not path.is_file():
        raise error(f"{what} {path} does not exist.")
    name = f"{prefix}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - user code
        sys.modules.pop(name, None)
        raise error(f"importing {what} {path} failed: {type(exc).__name__}: {exc}.") from None
    return module
