"""The runtime interface: what every runtime plugin declares and how an artifact is run and timed on it.

A runtime runs one artifact form (an ``edgeq export --to`` output at a precision), says whether it can run
here (``available()`` returns the reason it cannot, or None), describes the device it runs on
(``fingerprint()``: CPU model, ISA flags, cores, runtime and provider versions), and opens an artifact as a
``Session``: ``run`` for outputs, ``time`` / ``step`` for latency, measured where the model runs.
"""
from __future__ import annotations

import importlib.util
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..envinfo import machine
from ..errors import EdgeqError
from ..samples import Outputs, run_batches

EXPORT_FORMS = ("onnx", "tensorrt", "coreml")   # ``edgeq export --to`` values
PRECISIONS = ("int8", "fp32", "fp16", "mixed")


@dataclass(frozen=True)
class ArtifactForm:
    export: str      # which ``edgeq export --to`` output the runtime reads
    precision: str   # what it computes in: int8 (QDQ, edgeq's placement decides what stays float), fp32, ...


def onnx_file(path: str | Path) -> Path:
    """An ONNX artifact path; an ``edgeq export --to tensorrt`` folder stands for the model.onnx inside it."""
    path = Path(path)
    if path.is_dir() and (path / "model.onnx").is_file() and not (path / "manifest.json").is_file():
        return path / "model.onnx"
    return path


class RuntimeUnavailable(EdgeqError):
    """The runtime cannot run here (missing package, wrong operating system, no device)."""


class Session(ABC):
    """One loaded artifact at one batch size and thread count, with a fixed random input for timing."""

    batch: int | None                 # None: the artifact's own batch axis (evaluation), timing at batch 1
    threads: int | None
    fixed_batch: int | None = None    # the artifact's batch axis, when it has a fixed one
    input_info: list[tuple]           # (name, shape with None or a name for free axes, type string) per input
    feeds: list[np.ndarray]           # a fixed random input at ``batch``, for timing

    def __init__(self):
        self.times: list[float] = []

    @abstractmethod
    def infer(self, arrays) -> list[np.ndarray]:
        """The outputs for one batch (one array per model input)."""

    def run(self, samples, batch_size: int = 64) -> Outputs:
        """Outputs for all ``samples`` (Samples, an array, or one array per input)."""
        return run_batches(self.infer, samples, batch_size, self.fixed_batch)

    def step(self, record: bool = True) -> None:
        """Time one inference on the timing input (milliseconds appended to ``times``)."""
        start = time.perf_counter()
        self.infer(self.feeds)
        if record:
            self.times.append((time.perf_counter() - start) * 1000.0)

    def time(self, n: int) -> list[float]:
        """Milliseconds of ``n`` back-to-back inferences."""
        before = len(self.times)
        for _ in range(n):
            self.step()
        return self.times[before:]


class Runtime(ABC):
    name: str
    description: str
    form: ArtifactForm
    package: str | None = None     # the Python package it needs, and how to install it
    install: str = ""
    also_reads: tuple[str, ...] = ()   # artifact forms it runs besides its own
    qdq_form: str = "ort"   # the int8 ONNX graph form it fuses best (export.onnx: "ort" | "openvino")

    def available(self) -> str | None:
        """Why this runtime cannot run here, or None when it can."""
        if self.package and importlib.util.find_spec(self.package) is None:
            return f"{self.package} is not installed ({self.install})"
        return None

    def accepts(self, form: str) -> bool:
        """Whether it runs an artifact of this ``edgeq export --to`` form."""
        return form == self.form.export or form in self.also_reads

    def require(self) -> None:
        reason = self.available()
        if reason:
            raise RuntimeUnavailable(f"the {self.name} runtime cannot run here: {reason}.")

    def fingerprint(self) -> dict:
        """The device as this runtime sees it: CPU, ISA flags, cores, and the runtime's versions."""
        return {"runtime": self.name, **machine(), **self.versions()}

    def versions(self) -> dict:
        return {}

    @abstractmethod
    def open(self, artifact: str | Path, batch: int | None = 1, threads: int | None = None,
             options: dict | None = None) -> Session:
        """Load ``artifact`` for inference at ``batch`` (None: as exported, for evaluation) with ``threads``
        (None: the runtime's default)."""

    def ops(self, artifact: str | Path, x: np.ndarray, runs: int, threads: int | None) -> dict[str, dict]:
        """Time per op type and the kernel the runtime picked (``edgeq profile --ops``)."""
        raise EdgeqError(f"the {self.name} runtime has no per-op profile in edgeq.")
