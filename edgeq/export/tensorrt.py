"""TensorRT: an explicit-quantization ONNX that follows TensorRT's Q/DQ rules, and an engine where the
``tensorrt`` package imports.

TensorRT takes signed int8 with zero-point 0, per-channel weight scales on the output-channel axis and
one scale per activation tensor; an Add fuses into the int8 Conv before it only when its residual input
arrives quantized. edgeq's bundles may hold asymmetric uint8 or per-channel activations (reconstruction
chooses them for the x86 runtimes), so this export re-expresses every activation quantizer as symmetric
int8 covering the same range, quantizes residual inputs with ranges measured on the bundle's calibration
samples, keeps biases in float, and lints the result (``trt_rules``). Units edgeq kept in float stay
float in the ONNX and run in FP16 through the builder's FP16 flag.

TensorRT cannot be installed on edgeq's CI machines: there the engine is not built, the record says so,
and ``trtexec.sh`` holds the equivalent command line.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from .. import ui
from ..bundle import require_single_input, quantized_graph, read_bundle
from ..errors import ArtifactError
from ..fsutil import atomic_path, check_output
from ..metrics import compare_outputs
from ..runtimes import ort as ort_cpu
from ..samples import Samples, run_graph
from .artifact import artifact_record, float_layers, placement_fields
from .onnx import _batch, _export, sidecar_path
from .qdq import GraphIndex, count_ops, remove_unused_initializers
from .trt_rules import GraphView, lint, unquantized_residual


def export_tensorrt(bundle_path: str | Path, out_dir: str | Path, opset: int = 18, force: bool = False,
                    workspace_mib: int = 1024, target: str = "TensorRT") -> dict:
    """``target``: whose latency placement to apply (a bundle rarely holds one for a TensorRT device: then
    the recipe's placement, every candidate int8)."""
    out_dir = check_output(out_dir, force, is_dir=True)
    bundle = read_bundle(bundle_path, target)
    require_single_input(bundle, "--to tensorrt")
    gm = quantized_graph(bundle)
    with atomic_path(out_dir, is_dir=True) as tmp:
        path = tmp / "model.onnx"
        with ui.status("exporting a TensorRT explicit-quantization ONNX"):
            model, passes = _export(gm, bundle, path, "int8", opset, runtime="tensorrt")
            passes["made_symmetric_int8"] = symmetric_int8(model)
            passes["residual_inputs_quantized"] = quantize_residuals(model, bundle.samples)
        findings = lint(model)
        errors = [f for f in findings if f.severity == "error"]
        if errors:   # our own bug, never the user's: say which rule broke
            raise ArtifactError(f"the TensorRT export breaks TensorRT rule {errors[0].rule} at node "
                                f"{errors[0].node} ({errors[0].message}); please report this.")
        onnx.save(model, str(path))
        fidelity = compare_outputs(run_graph(gm, bundle.samples, _batch(bundle)),
                                   ort_cpu.run(ort_cpu.session(path), bundle.samples))
        profile = shape_profile(bundle.input_shape, bundle.manifest["dynamic_batch"], bundle.input_specs[0].dynamic)
        command = trtexec_command("model.onnx", "model.engine", profile, workspace_mib)
        (tmp / "trtexec.sh").write_text("#!/bin/sh\n# build the engine on the target (TensorRT installed)\n"
                                        f"cd \"$(dirname \"$0\")\"\n{command}\n")
        engine = build_engine(path, tmp / "model.engine", profile, workspace_mib)
        record = artifact_record(
            out_dir / "model.onnx", path, "onnx-tensorrt", "int8", bundle, bundle_path, True,
            {**fidelity, "reference": "torch fake-quant model",
             "runtime": "ONNX Runtime CPU (the engine itself is checked where it is built)"},
            opset=opset, float_layers={"layers": float_layers(bundle),
                                       "precision": "FP16 in the engine (builder flag --fp16); FP32 in this ONNX"},
            op_counts=count_ops(model), passes=passes, lint=[f.to_dict() for f in findings], engine=engine,
            trtexec=command, **placement_fields(bundle, True))
        sidecar_path(path).write_text(json.dumps(record, indent=2) + "\n")   # inside the folder's atomic move
    return record


def symmetric_int8(model: onnx.ModelProto) -> dict:
    """Every Q/DQ pair becomes signed int8, zero-point 0, one scale per activation tensor, covering the
    range the original quantizer covered (integer weights are re-rounded onto their symmetric grid)."""
    g = GraphIndex(model)
    zero = _int8_zero(g)
    acts = weights = 0
    for q in [n for n in g.graph.node if n.op_type == "QuantizeLinear"]:
        scale, zp = g.array(q.input[1]), _zero_point(g, q)
        if zp.dtype == np.int8 and not zp.any() and scale.size == 1:
            continue
        qmin, qmax = (0, 255) if zp.dtype == np.uint8 else (-128, 127)
        amax = max(float(np.max(np.abs((qmin - zp.astype(np.float64)) * scale))),
                   float(np.max(np.abs((qmax - zp.astype(np.float64)) * scale))))
        new_scale = g.add_init(q.input[1] + "_trt", np.array(max(amax, 1e-12) / 127.0, np.float32))
        _rewire_pair(g, q, new_scale, zero)
        acts += 1
    for dq in [n for n in g.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in g.inits]:
        weights += _symmetric_weight(g, dq, zero)
    remove_unused_initializers(model)
    _drop_value_info(model)
    return {"activations": acts, "weights": weights}


def _int8_zero(g: GraphIndex) -> str:
    """The shared int8 zero-point initializer (added once per graph)."""
    name = "edgeq_trt_zero_point"
    return name if name in g.inits else g.add_init(name, np.zeros((), np.int8))


def _zero_point(g: GraphIndex, node: onnx.NodeProto) -> np.ndarray:
    return g.array(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)


def _rewire_pair(g: GraphIndex, q: onnx.NodeProto, scale: str, zero: str) -> None:
    old = list(q.input[1:3])
    _set_qparams(q, scale, zero)
    for dq in g.consumers.get(q.output[0], []):
        if dq.op_type == "DequantizeLinear" and list(dq.input[1:3]) == old:
            _set_qparams(dq, scale, zero)


def _set_qparams(node: onnx.NodeProto, scale: str, zero: str) -> None:
    del node.input[1:]
    node.input.extend([scale, zero])
    kept = [a for a in node.attribute if a.name != "axis"]
    del node.attribute[:]
    node.attribute.extend(kept)


def _symmetric_weight(g: GraphIndex, dq: onnx.NodeProto, zero: str) -> int:
    q, scale, zp = g.array(dq.input[0]), g.array(dq.input[1]), _zero_point(g, dq)
    if zp.dtype == np.int8 and not zp.any():
        return 0
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % q.ndim
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[axis] = -1
    w = (q.astype(np.float64) - zp.reshape(shape)) * scale.reshape(shape)
    reduce = tuple(i for i in range(q.ndim) if i != axis) if scale.size > 1 else None
    new_scale = np.maximum(np.abs(w).max(axis=reduce, keepdims=True), 1e-12) / 127.0
    dq.input[0] = g.add_init(dq.input[0] + "_s8", np.clip(np.round(w / new_scale), -127, 127).astype(np.int8))
    dq.input[1] = g.add_init(dq.input[1] + "_s8", new_scale.reshape(scale.shape).astype(np.float32))
    zeros = g.add_init(f"{dq.input[0]}_zero_point", np.zeros(zp.shape, np.int8)) if zp.size > 1 else zero
    del dq.input[2:]
    dq.input.append(zeros)
    return 1


def _drop_value_info(model: onnx.ModelProto) -> None:
    """Recorded types of Q outputs are stale (uint8 → int8); ONNX Runtime re-infers them."""
    del model.graph.value_info[:]


def quantize_residuals(model: onnx.ModelProto, samples: Samples) -> int:
    """Insert Q/DQ on the residual input of each Add that follows an int8 Conv, with a symmetric range
    measured on ``samples``: TensorRT then fuses the Add into the Conv."""
    view = GraphView(model)
    targets = {node.name: unquantized_residual(node, view) for node in model.graph.node}
    targets = {name: tensor for name, tensor in targets.items() if tensor}
    if not targets:
        return 0
    amax = _ranges(model, sorted(set(targets.values())), samples)
    g = GraphIndex(model)
    zero = _int8_zero(g)
    nodes = {n.name: n for n in g.graph.node}
    for add_name, tensor in targets.items():
        scale = g.add_init(f"{tensor}_residual_scale", np.array(max(amax[tensor], 1e-12) / 127.0, np.float32))
        q = helper.make_node("QuantizeLinear", [tensor, scale, zero], [f"{tensor}_residual_q"],
                             name=f"{add_name}_residual_q")
        dq = helper.make_node("DequantizeLinear", [q.output[0], scale, zero], [f"{tensor}_residual_dq"],
                              name=f"{add_name}_residual_dq")
        add = nodes[add_name]
        add.input[list(add.input).index(tensor)] = dq.output[0]
        at = list(g.graph.node).index(add)
        g.graph.node.insert(at, dq)
        g.graph.node.insert(at, q)
    return len(targets)


def _ranges(model: onnx.ModelProto, tensors: list[str], samples: Samples) -> dict[str, float]:
    """max |x| of intermediate tensors over the calibration samples (ONNX Runtime, the model as it is; samples
    of different lengths run at their own lengths, never padded)."""
    import tempfile
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors)
    with tempfile.TemporaryDirectory(prefix="edgeq-trt-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(probe, str(path))
        sess = ort_cpu.session(path)
        name, shape = ort_cpu.input_info(sess)
        fixed = isinstance(shape[0], int)
        step = shape[0] if fixed else min(16, len(samples))
        amax = dict.fromkeys(tensors, 0.0)
        for idx, arrays in samples.groups(step):
            if fixed and len(idx) < step:   # a fixed batch axis takes whole batches only
                continue
            outs = sess.run(tensors, {name: arrays[0]})
            for t, value in zip(tensors, outs):
                amax[t] = max(amax[t], float(np.abs(value).max()))
    return amax


Profile = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def shape_profile(shape: tuple[int, ...], dynamic_batch: bool, dynamic_axis) -> Profile | None:
    """TensorRT's (min, opt, max) input shapes: batch 1..max(32, B) when the batch is dynamic, and the
    model's own range on its dynamic width/time axis (optimised for the example's size); None when the
    input shape is fixed."""
    if not dynamic_batch and dynamic_axis is None:
        return None
    low, opt, high = list(shape), list(shape), list(shape)
    if dynamic_batch:
        low[0], high[0] = 1, max(32, shape[0])
    if dynamic_axis is not None:
        axis, low[axis], high[axis] = dynamic_axis
    return tuple(low), tuple(opt), tuple(high)


def trtexec_command(onnx_name: str, engine_name: str, profile: Profile | None, workspace_mib: int) -> str:
    """The trtexec line that builds the same engine as ``build_engine``."""
    args = ["trtexec", f"--onnx={onnx_name}", f"--saveEngine={engine_name}", "--int8", "--fp16",
            "--timingCacheFile=timing.cache", f"--memPoolSize=workspace:{workspace_mib}M"]
    if profile is not None:
        args += [f"--{kind}Shapes=input:{'x'.join(map(str, dims))}"
                 for kind, dims in zip(("min", "opt", "max"), profile)]
    return " ".join(shlex.quote(a) for a in args)


def build_engine(onnx_path: Path, engine_path: Path, profile: Profile | None, workspace_mib: int) -> dict:
    """Serialize an INT8+FP16 engine with a timing cache (and an optimization profile when the batch or a
    width/time axis is dynamic). Needs the ``tensorrt`` package and an NVIDIA GPU; without them, says so."""
    try:
        import tensorrt as trt
    except ImportError:
        return {"built": False, "reason": "the tensorrt Python package is not installed on this machine; run "
                                          "trtexec.sh (next to model.onnx) on the target"}
    from .trt_engine import build
    return build(trt, onnx_path, engine_path, profile, workspace_mib)
