"""CoreML on Apple silicon: the ``coreml`` runtime runs ``edgeq export --to coreml`` ML programs.

Prediction needs macOS (coremltools converts anywhere but predicts only there), so on Linux
``available()`` says so and callers report "not measured" with that reason — never a number.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import platform

import numpy as np

from .base import ArtifactForm, Runtime, Session


class CoremlSession(Session):
    def __init__(self, path, batch: int | None, compute_units: str = "ALL", seed: int = 0):
        import coremltools as ct
        super().__init__()
        self.batch, self.threads = batch, None
        self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
        spec = self.model.get_spec()
        self.names = [i.name for i in spec.description.input]
        shape = list(spec.description.input[0].type.multiArrayType.shape)
        self.fixed_batch = shape[0] if shape else None
        self.input_info = [(i.name, list(i.type.multiArrayType.shape), "tensor(float)")
                           for i in spec.description.input]
        self.feeds = [np.random.default_rng(seed).standard_normal([batch or self.fixed_batch or 1, *shape[1:]])
                      .astype(np.float32)]

    def infer(self, arrays) -> list[np.ndarray]:
        result = self.model.predict(dict(zip(self.names, arrays)))
        return [np.asarray(v) for v in result.values()]


class CoremlRuntime(Runtime):
    name = "coreml"
    description = "CoreML on Apple silicon (CPU, GPU and Neural Engine; float16 compute)"
    form = ArtifactForm("coreml", "int8")

    def available(self) -> str | None:
        if platform.system() != "Darwin":
            return f"CoreML predicts only on macOS (this is {platform.system()})"
        if importlib.util.find_spec("coremltools") is None:
            return 'coremltools is not installed (pip install "edgeq[coreml]")'
        return None

    def versions(self) -> dict:
        return {"coremltools": importlib.metadata.version("coremltools"), "macos": platform.mac_ver()[0]}

    def open(self, artifact, batch: int | None = 1, threads: int | None = None, options: dict | None = None) -> Session:
        self.require()
        return CoremlSession(artifact, batch, (options or {}).get("compute_units", "ALL"))


RUNTIME = CoremlRuntime()
