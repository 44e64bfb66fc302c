"""The peers to beat, each run the way its docs suggest, on the same calibration inputs edgeq uses (one
sample at a time, each at its own length: no padding).

- ONNX Runtime's own static quantizer (``ort-minmax``): QDQ format, per-channel int8 weights, uint8
  activations, MinMax calibration.
- NNCF (``nncf``, ``nncf-ov``, ``nncf-ov-transformer``): its default post-training quantization with the ONNX
  backend (a QDQ ONNX) and with the OpenVINO backend (OpenVINO IR, default and ``model_type=TRANSFORMER``).
"""
from __future__ import annotations

import contextlib
import io
import json
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


# ---- NNCF, the incumbent on OpenVINO (a bench/dev extra, never a core dependency) -----------------------

NNCF_VARIANTS = {
    "nncf": "NNCF default, ONNX backend (a QDQ ONNX both runtimes run)",
    "nncf-ov": "NNCF default, OpenVINO backend (OpenVINO IR)",
    "nncf-ov-transformer": "NNCF model_type=TRANSFORMER, OpenVINO backend (OpenVINO IR)",
}


def nncf_missing() -> str | None:
    """Why the NNCF rows cannot be made here, or None."""
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError as exc:
        return f"NNCF rows need nncf and openvino (pip install nncf openvino): {exc}"
    return None


def nncf_quantize(variant: str, fp32_path: str | Path, out: str | Path, calib) -> float:
    """Write NNCF's post-training quantization of ``fp32_path`` the way its docs suggest (default preset,
    every calibration sample, each at its own length) to ``out`` (``.onnx`` for the ONNX backend, ``.xml`` for
    OpenVINO IR with FP32 weights kept); returns the seconds it took (quantization and saving)."""
    import nncf
    import onnx
    import openvino as ov

    from .runtimes.feeds import example_shapes

    start = time.perf_counter()
    items = [arrays[0] for _, arrays in as_samples(calib).groups(1)]
    kind = nncf.ModelType.TRANSFORMER if variant.endswith("transformer") else None
    with _quiet():
        if variant == "nncf":
            model = onnx.load(str(fp32_path))
            name = model.graph.input[0].name
            quantized = nncf.quantize(model, nncf.Dataset(items, lambda x: {name: x}), subset_size=len(items))
            onnx.save(quantized, str(out))
        else:
            model = ov.Core().read_model(str(fp32_path))
            quantized = nncf.quantize(model, nncf.Dataset(items), model_type=kind, subset_size=len(items))
            examples = example_shapes(fp32_path)
            if examples:   # symbolic axes are timed at the size edgeq exported with (as for its ONNX files)
                quantized.set_rt_info(json.dumps(examples), "edgeq_input_shapes")
            ov.save_model(quantized, str(out), compress_to_fp16=False)
    return time.perf_counter() - start


class _quiet:
    """NNCF logs INFO lines and draws progress bars on stdout per call: silenced, so that ``--json`` output stays
    JSON and the bench log keeps edgeq's own lines."""

    def __enter__(self):
        self.logger = logging.getLogger("nncf")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)
        self.streams = contextlib.ExitStack()
        self.streams.enter_context(contextlib.redirect_stdout(io.StringIO()))
        self.streams.enter_context(contextlib.redirect_stderr(io.StringIO()))

    def __exit__(self, *exc):
        self.streams.close()
        self.logger.setLevel(self.level)


def incumbent_variants(work: Path, calib, targets: list) -> list:
    """What a deployment engineer would use anyway, from the same FP32 ONNX and calibration samples: ONNX
    Runtime's quantize_static (both runtimes), NNCF's ONNX-backend file (both runtimes) and its OpenVINO IR,
    default and transformer preset (OpenVINO only). NNCF rows are left out, with a log line, where NNCF is not
    installed (it is a dev/bench extra)."""
    from . import ui
    from .report.build import Built, Variant
    seconds = round(ort_minmax(work / "fp32.onnx", work / "ort-minmax.onnx", calib), 2)
    made = [Variant("ort-minmax", "baseline", {t.name: Built(work / "ort-minmax.onnx", seconds) for t in targets})]
    missing = nncf_missing()
    if missing:
        ui.log(f"no NNCF rows: {missing}")
        return made
    for variant in NNCF_VARIANTS:
        out = work / (f"{variant}.onnx" if variant == "nncf" else f"{variant}.xml")
        seconds = round(nncf_quantize(variant, work / "fp32.onnx", out, calib), 2)
        runs_on = [t for t in targets if variant == "nncf" or t.runtime == "openvino"]
        made.append(Variant(variant, "baseline", {t.name: Built(out, seconds) for t in runs_on}))
    return made
