"""How much of the channels-first openvino form's speed is layout and how much is int8 (session 17).

For each timm model: a `w8a8-fast` bundle at 224×224 (32 random calibration images, no reconstruction), then
three files timed against edgeq's FP32 export in OpenVINO, interleaved, in
``--reps`` separate rotations:
  fp32-cf      the FP32 export with ``channels_first`` applied (the layout alone)
  int8-nhwc    the openvino form without the layout pass (what edgeq shipped before session 17)
  int8-cf      the openvino form as shipped now
Usage: python reports/experiments/channels-first/layout_pair.py edgenext_xx_small convnext_tiny [--reps 3]
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx

from edgeq import api
from edgeq.envinfo import machine
from edgeq.export import openvino_form
from edgeq.export.openvino_layout import channels_first
from edgeq.profile.latency import compare


def files(name: str, work: Path) -> dict[str, Path]:
    calib = work / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((32, 3, 224, 224)).astype(np.float32))
    bundle = work / f"{name}.edgeq"
    api.quantize(f"timm:{name}", f"{calib}:x", "w8a8-fast", bundle, input_shape=(1, 3, 224, 224), seed=0)
    out = {"fp32": work / "fp32.onnx", "fp32-cf": work / "fp32-cf.onnx", "int8-nhwc": work / "int8-nhwc.onnx",
           "int8-cf": work / "int8-cf.onnx"}
    api.export(bundle, "onnx", out["fp32"], precision="fp32")
    model = onnx.load(str(out["fp32"]))
    print(f"{name}: {channels_first(model)} channels-last islands")
    onnx.save(model, str(out["fp32-cf"]))
    api.export(bundle, "onnx", out["int8-cf"], precision="int8", target="openvino-cpu")
    shipped = openvino_form.channels_first
    openvino_form.channels_first = lambda m: 0   # the form as it was before the layout pass
    try:
        api.export(bundle, "onnx", out["int8-nhwc"], precision="int8", target="openvino-cpu")
    finally:
        openvino_form.channels_first = shipped
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    env = machine()
    print(env["processor"], env["isa"])
    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            out = files(name, Path(tmp))
            keys = ["fp32-cf", "int8-nhwc", "int8-cf"]
            for rep in range(args.reps):
                ratios = compare(out["fp32"], [out[k] for k in keys], runs=120, target="openvino-cpu")
                cells = "  ".join(f"{k} {1 / r.ratio:.2f}x ({1 / r.high:.2f}-{1 / r.low:.2f})"
                                  for k, r in zip(keys, ratios))
                print(f"{name} rotation {rep + 1}: FP32 {ratios[0].reference_ms} ms; {cells}", flush=True)


if __name__ == "__main__":
    main()
