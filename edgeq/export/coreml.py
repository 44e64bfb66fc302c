"""CoreML: an ML program (``.mlpackage``, iOS 17 / macOS 14) in three flavours.

- ``fp16``: the float model, computed in FP16.
- ``w8``: int8 weights (edgeq's own integer weights and scales, as ``constexpr_affine_dequantize``),
  FP16 activations.
- ``w8a8``: as ``w8`` plus ``quantize``/``dequantize`` ops on the activations, with the scales edgeq's
  calibration and reconstruction chose (coremltools does not re-calibrate anything).

The fake-quant graph is traced with its quantizers written as ``torch.quantize_per_tensor/channel(...)
.dequantize()``, which coremltools' PyTorch frontend turns into exactly those MIL ops. Units edgeq kept in
float have no quantizer and run in FP16. On Linux coremltools can write and read packages but not run
them: the check there counts the MIL ops in the saved spec, and fidelity is recorded as not verifiable.
"""
from __future__ import annotations

import contextlib
import io
import logging
import platform
import re
import warnings
from pathlib import Path

import torch

from .. import ui
from ..bundle import Bundle, float_graph, quantized_graph, read_bundle, require_single_input
from ..errors import ArtifactError
from ..fsutil import atomic_path
from ..metrics import compare_outputs
from ..quant.fakequant import ActQuant, WeightQuant, _FakeQuant
from ..samples import run_graph
from .artifact import artifact_record, check_outputs, float_layers, placement_fields, write_sidecar

FLAVOURS = ("w8a8", "w8", "fp16")
COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")
COMPUTE_OPS = {"conv", "linear", "matmul", "conv_transpose"}


def export_coreml(bundle_path: str | Path, out: str | Path, flavour: str = "w8a8", compute_units: str = "ALL",
                  force: bool = False, target: str = "CoreML") -> dict:
    if flavour not in FLAVOURS:
        raise ArtifactError(f"CoreML --precision must be one of {', '.join(FLAVOURS)}, got {flavour!r}.")
    if compute_units not in COMPUTE_UNITS:
        raise ArtifactError(f"--compute-units must be one of {', '.join(COMPUTE_UNITS)}, got {compute_units!r}.")
    ct = _coremltools()
    out = Path(out)
    if out.suffix != ".mlpackage":
        raise ArtifactError(f"a CoreML ML program is a folder ending in .mlpackage; got {out}.")
    out = check_outputs(out, force, is_dir=True)
    bundle = read_bundle(bundle_path, target)   # whose latency placement (usually none: the recipe's)
    require_single_input(bundle, "--to coreml")
    gm = float_graph(bundle) if flavour == "fp16" else quantized_graph(bundle)
    with atomic_path(out) as tmp:
        with ui.status(f"converting to a CoreML {flavour} ML program"):
            mlmodel = _convert(ct, gm, bundle, flavour, compute_units)
            mlmodel.save(str(tmp))
        ops = count_mil_ops(ct, tmp)
        expected = _expected_quant_ops(gm, flavour)
        problems = _check_ops(ops, expected)
        if problems:
            raise ArtifactError(f"the CoreML {flavour} package does not hold what edgeq put in: {problems[0]}; "
                                f"please report this.")
        quantized = flavour != "fp16"
        record = artifact_record(
            out, tmp, "coreml-mlprogram", flavour, bundle, bundle_path, quantized,
            _fidelity(mlmodel, gm, bundle, flavour),
            minimum_deployment_target="iOS17 / macOS14", compute_units=compute_units, compute_precision="float16",
            dynamic_batch=False, **_dynamic_fields(bundle),
            float_layers={"layers": float_layers(bundle) if quantized else "all",
                          "precision": "FP16 (no quantizer; compute precision float16)"},
            mil_ops=ops["all"], mil_op_dtypes=ops["compute_dtypes"], expected_quant_ops=expected,
            **placement_fields(bundle, quantized))
        write_sidecar(out, record)   # the record lands just before the package
    return record


def _dynamic_fields(bundle: Bundle) -> dict:
    dynamic = bundle.input_specs[0].dynamic
    if dynamic is None:
        return {}
    axis, low, high = dynamic
    return {"dynamic_axis": {"axis": axis, "min": low, "max": high, "default": bundle.input_shape[axis],
                             "kind": "RangeDim (one package for every length in range)"}}


def _coremltools():
    try:
        with contextlib.redirect_stderr(io.StringIO()):   # "Failed to load _MLModelProxy" on Linux
            import coremltools as ct
    except ImportError:
        raise ArtifactError('CoreML export needs coremltools: pip install "edgeq[coreml]".') from None
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    return ct


class _CoreMLQuant(torch.nn.Module):
    """A quantizer as quantize → dequantize on a torch quantized tensor (what coremltools converts)."""

    def __init__(self, fq: _FakeQuant):
        super().__init__()
        self.fq = fq
        self.dtype = torch.qint8 if fq.qmin < 0 else torch.quint8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fq = self.fq
        if fq.narrow:
            x = fq._clamp_narrow(x)
        if fq.axis is None:
            q = torch.quantize_per_tensor(x, fq.scale_value, fq.zero_point_value, self.dtype)
        else:
            q = torch.quantize_per_channel(x, fq.scale.double(), fq.zero_point.long(), fq.axis, self.dtype)
        return q.dequantize()


def _convert(ct, gm: torch.fx.GraphModule, bundle: Bundle, flavour: str, compute_units: str):
    for name, module in list(gm.named_children()):
        if isinstance(module, WeightQuant) or (isinstance(module, ActQuant) and flavour == "w8a8"):
            setattr(gm, name, _CoreMLQuant(module))
        elif isinstance(module, ActQuant):
            module.bypass = True   # w8: activations stay FP16
    first = next(bundle.samples.groups(1))[1][0]   # one real sample at its own length (never padded)
    example = torch.from_numpy(first.repeat(bundle.input_shape[0], axis=0))
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(gm, example)
            return ct.convert(traced, inputs=[ct.TensorType(name="input", shape=input_shape(ct, bundle, example))],
                              outputs=[ct.TensorType(name="output")], convert_to="mlprogram",
                              minimum_deployment_target=ct.target.iOS17,
                              compute_precision=ct.precision.FLOAT16,
                              compute_units=getattr(ct.ComputeUnit, compute_units))
    except Exception as exc:  # noqa: BLE001 - coremltools raises plain exceptions for unsupported ops
        raise ArtifactError(_conversion_error(exc, gm)) from None


def input_shape(ct, bundle: Bundle, example: torch.Tensor) -> tuple:
    """The ML program's input shape: the example's, with a ranged dimension (``ct.RangeDim``, default the
    example's size) on the model's dynamic width/time axis, so one package takes every length in range."""
    shape = list(example.shape)
    dynamic = bundle.input_specs[0].dynamic
    if dynamic is not None:
        axis, low, high = dynamic
        shape[axis] = ct.RangeDim(lower_bound=low, upper_bound=high, default=shape[axis])
    return tuple(shape)


def _conversion_error(exc: Exception, gm: torch.fx.GraphModule) -> str:
    """One sentence naming the op (and the graph node using it) coremltools could not convert."""
    message = (str(exc).splitlines() or [type(exc).__name__])[0][:300].rstrip(".")
    op = re.search(r"op '([^']+)'", message)
    if not op:
        return f"coremltools cannot convert this model: {message}."
    nodes = [n for n in gm.graph.nodes if n.op == "call_function" and
             str(n.target).split(".")[1:2] in ([op.group(1)], [f"special_{op.group(1)}"])]
    where = f" (node {nodes[0].name}, {len(nodes)} in all)" if nodes else ""
    return f"CoreML has no conversion for op {op.group(1)!r}{where}; this model cannot be exported to CoreML as is."


def count_mil_ops(ct, package: Path) -> dict:
    """Op counts of the saved ML program, and the output dtype of each compute op (conv, linear …)."""
    spec = ct.utils.load_spec(str(package))
    counts: dict[str, int] = {}
    dtypes: dict[str, dict[str, int]] = {}
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                counts[op.type] = counts.get(op.type, 0) + 1
                if op.type in COMPUTE_OPS and op.outputs:
                    dtype = ct.proto.MIL_pb2.DataType.Name(op.outputs[0].type.tensorType.dataType)
                    per_op = dtypes.setdefault(op.type, {})
                    per_op[dtype] = per_op.get(dtype, 0) + 1
    return {"all": dict(sorted(counts.items())), "compute_dtypes": dtypes}


def _expected_quant_ops(gm: torch.fx.GraphModule, flavour: str) -> dict:
    """What the ML program must hold. An activation quantizer whose input depends on the model input only
    through its shape (edgenext's positional encoding) sees a constant in the trace, and coremltools folds it
    into an int8 constant (``constexpr_affine_dequantize``) like a weight."""
    modules = dict(gm.named_children())
    live = {n for n in gm.graph.nodes if n.op == "placeholder"}
    for node in gm.graph.nodes:
        if "sym_size" not in str(node.target) and any(arg in live for arg in node.all_input_nodes):
            live.add(node)
    calls = [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(modules.get(n.target), _CoreMLQuant)]
    acts = [n in live for n in calls if isinstance(modules[n.target].fq, ActQuant)]
    weights = sum(isinstance(modules[n.target].fq, WeightQuant) for n in calls)
    if flavour != "w8a8":
        return {"activation_quantize": 0, "int8_weights": weights, "int8_constants": weights}
    return {"activation_quantize": sum(acts), "int8_weights": weights,
            "int8_constants": weights + acts.count(False)}


def _check_ops(ops: dict, expected: dict) -> list[str]:
    counts, problems = ops["all"], []
    if counts.get("quantize", 0) != expected["activation_quantize"]:
        problems.append(f"{counts.get('quantize', 0)} quantize ops, expected {expected['activation_quantize']}")
    weights = counts.get("constexpr_affine_dequantize", 0) + counts.get("constexpr_blockwise_shift_scale", 0)
    if weights != expected["int8_constants"]:
        problems.append(f"{weights} int8 constants, expected {expected['int8_constants']}")
    for op, dtypes in ops["compute_dtypes"].items():
        if set(dtypes) - {"FLOAT16"}:
            problems.append(f"{op} computes in {sorted(dtypes)}, expected FLOAT16 only")
    return problems


def _fidelity(mlmodel, gm, bundle: Bundle, flavour: str) -> dict:
    reference = "torch fake-quant model" if flavour != "fp16" else "torch float model"
    if platform.system() != "Darwin":
        return {"verifiable": False, "reference": reference,
                "reason": f"CoreML prediction needs macOS; not verifiable on this OS ({platform.system()})"}
    refs, outs = [], []
    for _, arrays in bundle.samples.groups(1):   # each sample at its own length
        refs.append(run_graph(gm, arrays[0], 1)[0][0])
        outs.append(mlmodel.predict({"input": arrays[0]})["output"][0])
    return {**compare_outputs([refs], [outs]), "verifiable": True, "reference": reference}
