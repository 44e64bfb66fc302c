"""The peer to beat: ONNX Runtime's own static quantizer, run the way its docs suggest.

QDQ format, per-channel int8 weights, uint8 activations, MinMax calibration on the same
calibration inputs edgeq uses (one sample at a time, each at its own length: no padding).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from .samples import as_samples


def ort_minmax(fp32_path: str | Path, out: str | Path, calib) -> float:
    """Write ONNX Runtime's quantize_static result to ``out``; returns the seconds it took. ``calib``: a
    ``Samples`` (first input) or an array."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    import onnxruntime as ort

    input_name = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{input_name: arrays[0]} for _, arrays in as_samples(calib).groups(1)])

        def get_next(self):
            return next(self.items, None)

    start = time.perf_counter()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)   # its advice to pre-process and per-axis notes on the root logger, per node
    try:
        quantize_static(str(fp32_path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    finally:
        root.setLevel(level)
    return time.perf_counter() - start
