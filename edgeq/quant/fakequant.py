"""Fake-quantization modules inserted into the captured graph, and the pass that inserts them.

Each quantized layer (conv2d / linear node) gets an ``ActQuant`` on its activation input and a
``WeightQuant`` on its weight. Both export to ONNX QuantizeLinear/DequantizeLinear pairs through
torch's ONNX exporter; the weight pair is folded into an int8 initializer afterwards.
An activation tensor read by several layers with the same spec gets one shared quantizer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from ..trace.blocks import BlockMap
from ..trace.graphutil import get_attr, node_by_name, set_param
from .observers import Observer, QParams, observe_weight
from .recipe import LayerSpec, Recipe


class _FakeQuant(torch.nn.Module):
    """Holds QParams in an export-friendly form: Python numbers per-tensor, buffers per-channel."""

    def set_qparams(self, qp: QParams) -> None:
        self.qparams = qp
        self.qmin, self.qmax, self.axis = qp.qmin, qp.qmax, qp.axis
        if qp.axis is None:
            self.scale_value, self.zero_point_value = float(qp.scale[0]), int(qp.zero_point[0])
        else:
            self.register_buffer("scale", qp.scale.clone())
            self.register_buffer("zero_point", qp.zero_point.clone())

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(
                x, self.scale_value, self.zero_point_value, self.qmin, self.qmax)
        return torch.fake_quantize_per_channel_affine(
            x, self.scale, self.zero_point, self.axis, self.qmin, self.qmax)


class ActQuant(_FakeQuant):
    """Observes an activation during calibration, fake-quantizes it afterwards."""

    def __init__(self, spec: LayerSpec, channel_axis: int, seed: int):
        super().__init__()
        self.spec = spec
        self.observer = Observer(spec, channel_axis, seed=seed)
        self.qparams: QParams | None = None
        self.observing = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observer.observe(x)
            return x
        return self.quantize(x)

    def freeze(self) -> QParams:
        self.load(self.observer.qparams())
        return self.qparams

    def load(self, qparams: QParams) -> None:
        self.set_qparams(qparams)
        self.observing = False


class WeightQuant(_FakeQuant):
    """Fake-quantizes a weight whose float value already lies on the integer grid."""

    def __init__(self, qparams: QParams):
        super().__init__()
        self.set_qparams(qparams)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.quantize(w)


@dataclass
class LayerQuant:
    """One layer's quantization: where its quantizers live in the graph and what they hold."""

    layer: str
    weight_spec: LayerSpec
    act_spec: LayerSpec
    act_module: str
    weight_target: str                 # get_attr target of the weight parameter
    weight_int: torch.Tensor | None = None
    weight_qparams: QParams | None = None


def plan_layers(block_map: BlockMap, recipe: Recipe) -> tuple[dict, dict]:
    """(layer -> (weight spec, act spec)) for quantized layers, (layer -> reason) for float ones."""
    quantized, kept_float = {}, {}
    for name, layer in block_map.layers.items():
        specs = recipe.resolve(name, layer.module, layer.op)
        if specs is None:
            kept_float[name] = "recipe override keeps it in float"
        else:
            quantized[name] = specs
    return quantized, kept_float


def insert_quantizers(gm: fx.GraphModule, plan: dict, seed: int = 0) -> dict[str, LayerQuant]:
    """Insert an observing ActQuant before each planned layer's input; returns the per-layer records.

    Weight quantizers come later (``finalize_weights``/``apply_weights``), once integers exist.
    """
    shared: dict[tuple, fx.Node] = {}
    records: dict[str, LayerQuant] = {}
    for node in list(gm.graph.nodes):
        if node.name not in plan:
            continue
        wspec, aspec = plan[node.name]
        x, w = node.args[0], node.args[1]
        key = (x.name, aspec)
        if key not in shared:
            module_name = f"edgeq_act_{len(shared)}"
            axis = 1 if node.target == torch.ops.aten.conv2d.default else x.meta["val"].dim() - 1
            gm.add_submodule(module_name, ActQuant(aspec, axis, seed + len(shared)))
            with gm.graph.inserting_after(x):
                shared[key] = gm.graph.call_module(module_name, (x,))
        node.replace_input_with(x, shared[key])
        records[node.name] = LayerQuant(node.name, wspec, aspec, shared[key].target, w.target)
    gm.graph.lint()
    gm.recompile()
    return records


def finalize_weights(gm: fx.GraphModule, records: dict[str, LayerQuant]) -> None:
    """Quantize each weight to integers, put q*scale back into the parameter, insert WeightQuant."""
    for rec in records.values():
        weight = get_attr(gm, rec.weight_target).detach()
        qp = observe_weight(weight, rec.weight_spec) if rec.weight_spec.granularity == "per_channel" \
            else _per_tensor_weight(weight, rec.weight_spec)
        rec.weight_qparams = qp
        rec.weight_int = quantize_int(weight, qp)
    apply_weights(gm, records)


def _per_tensor_weight(weight: torch.Tensor, spec: LayerSpec) -> QParams:
    obs = Observer(spec, channel_axis=None)
    obs.observe(weight)
    if spec.observer != "minmax":
        obs.samples = [weight.detach().float().reshape(1, -1)]
    return obs.qparams()


def quantize_int(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    shape = [1] * x.dim()
    if qp.axis is not None:
        shape[qp.axis] = -1
    scale, zp = qp.scale.view(shape), qp.zero_point.view(shape)
    q = torch.clamp(torch.round(x / scale) + zp, qp.qmin, qp.qmax)
    return q.to(torch.int8 if qp.qmin < 0 else torch.uint8)


def dequantize_int(q: torch.Tensor, qp: QParams) -> torch.Tensor:
    shape = [1] * q.dim()
    if qp.axis is not None:
        shape[qp.axis] = -1
    return (q.float() - qp.zero_point.view(shape).float()) * qp.scale.view(shape)


def apply_weights(gm: fx.GraphModule, records: dict[str, LayerQuant]) -> None:
    """Write dequantized integer weights into the graph and route them through WeightQuant."""
    for rec in records.values():
        set_param(gm, rec.weight_target, dequantize_int(rec.weight_int, rec.weight_qparams))
        module_name = f"edgeq_weight_{rec.layer}"
        gm.add_submodule(module_name, WeightQuant(rec.weight_qparams))
        layer_node = node_by_name(gm, rec.layer)
        w = layer_node.args[1]
        with gm.graph.inserting_before(layer_node):
            wq = gm.graph.call_module(module_name, (w,))
        layer_node.replace_input_with(w, wq)
    gm.graph.lint()
    gm.recompile()


def freeze_activations(gm: fx.GraphModule) -> dict[str, QParams]:
    return {name: mod.freeze() for name, mod in gm.named_children() if isinstance(mod, ActQuant)}
