"""Runtimes as plugins: every module in this package that defines ``RUNTIME`` (a ``base.Runtime``) is one.

Adding a runtime is one file here and its contract test (``tests/test_runtimes.py`` runs every registered
runtime through the same checks); the CLI choices, ``eval``, ``profile``, ``bench`` and the placement search
all ask this registry. Modules import their vendor SDK only when a session is opened, so listing runtimes
costs nothing.
"""
from __future__ import annotations

import importlib
import pkgutil

from ..errors import EdgeqError
from .base import Runtime

_NOT_PLUGINS = {"base", "feeds"}
_REGISTRY: dict[str, Runtime] = {}


def runtimes() -> dict[str, Runtime]:
    """Every runtime plugin, by name."""
    if not _REGISTRY:
        for info in pkgutil.iter_modules(__path__):
            if info.name in _NOT_PLUGINS or info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{__name__}.{info.name}")
            plugin = getattr(module, "RUNTIME", None)
            if isinstance(plugin, Runtime):
                _REGISTRY[plugin.name] = plugin
    return dict(_REGISTRY)


def get_runtime(name: str) -> Runtime:
    found = runtimes()
    if name not in found:
        raise EdgeqError(f"unknown runtime {name!r}: edgeq has {', '.join(sorted(found))}.")
    return found[name]
