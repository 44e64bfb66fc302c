"""Fixed random inputs for timing an artifact, shaped from the model's own input declarations."""
from __future__ import annotations

import numpy as np

from .. import runner
from ..errors import ArtifactError


def random_input(path, shape: list, batch: int, seed: int, example: list | None = None,
                 integer: bool = False) -> np.ndarray:
    """The runner's fixed random input (the same on the host and on a device), refusals as ArtifactError."""
    try:
        return runner.random_input(shape, batch, seed, example, integer)
    except runner.RunnerError as exc:
        raise ArtifactError(f"{path}: {exc}") from None


def example_shapes(path) -> list | None:
    """The input shapes edgeq exported the model with (ONNX metadata; an OpenVINO IR made from edgeq's ONNX
    carries them in its rt_info), for its symbolic axes."""
    import json

    import onnx
    if str(path).endswith(".xml"):
        return _ir_example_shapes(path)
    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return json.loads(props["edgeq_input_shapes"])
    except Exception:  # noqa: BLE001 - a foreign ONNX has no such metadata
        return None


def _ir_example_shapes(path) -> list | None:
    import json
    import xml.etree.ElementTree as ElementTree
    try:
        entry = ElementTree.parse(str(path)).getroot().find("rt_info/edgeq_input_shapes")
        return json.loads(entry.get("value")) if entry is not None else None
    except (OSError, ValueError, ElementTree.ParseError):
        return None


def random_feeds(path, inputs: list[tuple], batch: int, seed: int) -> dict[str, np.ndarray]:
    """{name: array} for ``inputs`` given as (name, shape, type string such as 'tensor(int64)')."""
    symbolic = any(not isinstance(d, int) for _, shape, _ in inputs for d in shape[1:])
    examples = (example_shapes(path) or []) if symbolic else []   # reading the file only when needed
    return {name: random_input(path, shape, batch, seed + i, examples[i] if i < len(examples) else None,
                               "int" in str(kind))
            for i, (name, shape, kind) in enumerate(inputs)}
