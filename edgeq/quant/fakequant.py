"""Fake-quantization modules inserted into the captured graph, and the pass that inserts them.

Each quantized layer (conv2d / linear node) gets an ``ActQuant`` on its activation input and a
``WeightQuant`` on its weight. Both export to ONNX QuantizeLinear/DequantizeLinear pairs through
torch's ONNX exporter; the weight pair is folded into an int8 initializer afterwards.
An activation tensor read by several layers with the same spec gets one shared quantizer.
"""
from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass

import torch
from torch import fx

from ..memory import release_freed_memory
from ..trace.blocks import BlockMap, conv_groups
from ..trace.graphutil import get_attr, node_by_name, set_param
from .observers import Observer, QParams, observe_weight
from .recipe import LayerSpec, Recipe


def spec_label(spec: LayerSpec) -> str:
    return f"{spec.granularity}/{'sym' if spec.symmetric else 'asym'}"


def _wide_range(qp: QParams) -> tuple[int, int]:
    """The 8-bit range of the same signedness: what ONNX QuantizeLinear can hold."""
    return (-128, 127) if qp.qmin < 0 else (0, 255)


class _FakeQuant(torch.nn.Module):
    """Holds QParams in an export-friendly form: Python numbers per-tensor, buffers per-channel.

    Sub-8-bit ranges are expressed as a float clamp to the narrow range followed by an 8-bit
    fake-quant (numerically the same, and exportable: torch's ONNX exporter only takes 8-bit ranges).
    The learned state of block reconstruction plugs in through ``learner`` while it runs.
    """

    learner = None
    clamp_narrow = True
    bypass = False   # set by fallback while it tries a unit in float

    def set_qparams(self, qp: QParams) -> None:
        self.qparams = qp
        self.axis = qp.axis
        self.qmin, self.qmax = _wide_range(qp)
        self.narrow = (qp.qmin, qp.qmax) != (self.qmin, self.qmax) and self.clamp_narrow
        if qp.axis is None:
            self.scale_value, self.zero_point_value = float(qp.scale[0]), int(qp.zero_point[0])
            self.lo_value = (qp.qmin - self.zero_point_value) * self.scale_value
            self.hi_value = (qp.qmax - self.zero_point_value) * self.scale_value
        else:
            self.register_buffer("scale", qp.scale.clone())
            self.register_buffer("zero_point", qp.zero_point.clone())

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.narrow:
            x = self._clamp_narrow(x)
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(
                x, self.scale_value, self.zero_point_value, self.qmin, self.qmax)
        return torch.fake_quantize_per_channel_affine(
            x, self.scale, self.zero_point, self.axis, self.qmin, self.qmax)

    def _clamp_narrow(self, x: torch.Tensor) -> torch.Tensor:
        if self.axis is None:
            return torch.clamp(x, self.lo_value, self.hi_value)
        shape = [1] * x.dim()
        shape[self.axis] = -1
        zp = self.zero_point.view(shape).float()
        scale = self.scale.view(shape)
        return torch.minimum(torch.maximum(x, (self.qparams.qmin - zp) * scale), (self.qparams.qmax - zp) * scale)


class ActQuant(_FakeQuant):
    """Observes an activation during calibration, fake-quantizes it afterwards."""

    def __init__(self, spec: LayerSpec, channel_axis: int, seed: int):
        super().__init__()
        self.spec = spec
        self.observer = Observer(spec, channel_axis, seed=seed, activation=True)
        self.qparams: QParams | None = None
        self.observing = True
        self.candidates: dict[str, Observer] = {}  # spec label -> Observer, when reconstruction chooses

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bypass:
            return x
        if self.learner is not None:
            return self.learner(x)
        if self.observing:
            self.observer.observe(x)
            for extra in self.candidates.values():
                extra.observe(x)
            return x
        return self.quantize(x)

    def add_candidates(self, specs: dict[str, LayerSpec], channel_axis: int, seed: int) -> None:
        self.candidates = {label: Observer(spec, channel_axis, seed=seed, activation=True)
                           for label, spec in specs.items()}

    def freeze(self) -> QParams:
        self.load(self.observer.qparams())
        if self.candidates:
            self.candidate_qparams = {spec_label(self.spec): self.qparams,
                                      **{label: obs.qparams() for label, obs in self.candidates.items()}}
            self.candidates = {}
        self.observer.samples = []  # the range is chosen; keep only min/max for the summary
        return self.qparams

    def load(self, qparams: QParams) -> None:
        self.set_qparams(qparams)
        self.observing = False


class WeightQuant(_FakeQuant):
    """Fake-quantizes a weight whose float value already lies on the integer grid (no clamp needed)."""

    clamp_narrow = False

    def __init__(self, qparams: QParams):
        super().__init__()
        self.set_qparams(qparams)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.bypass:
            return w
        if self.learner is not None:
            return self.learner(w)
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
    consumer_op: str = "linear"        # conv | dwconv (grouped) | linear: picks activation candidates
    float_weight: torch.Tensor | None = None  # kept while the pipeline runs (reconstruction starts from it)
    float_bias: torch.Tensor | None = None


def plan_layers(block_map: BlockMap, recipe: Recipe) -> tuple[dict, dict]:
    """(layer -> (weight spec, act spec)) for quantized layers, (layer -> reason) for float ones."""
    quantized, kept_float = {}, {}
    kinds = {b.name: b.kind for b in block_map.blocks}
    for name, layer in block_map.layers.items():
        specs = recipe.resolve(name, layer.module, layer.op, kinds.get(layer.block, ""))
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
        records[node.name] = LayerQuant(node.name, wspec, aspec, shared[key].target, w.target,
                                        consumer_op=_consumer_op(node))
    gm.graph.lint()
    gm.recompile()
    return records


def _consumer_op(node: fx.Node) -> str:
    if node.target != torch.ops.aten.conv2d.default:
        return "linear"
    return "dwconv" if conv_groups(node) > 1 else "conv"


def finalize_weights(gm: fx.GraphModule, records: dict[str, LayerQuant]) -> None:
    """Quantize each weight to integers, put q*scale back into the parameter, insert WeightQuant."""
    for rec in records.values():
        weight = get_attr(gm, rec.weight_target).detach()
        rec.float_weight = weight.clone()
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
    round_biases(gm, records)


def round_biases(gm: fx.GraphModule, records: dict[str, LayerQuant]) -> None:
    """Biases become what integer runtimes add: multiples of input scale × weight scale (int32 in QDQ).

    Without this the fake-quant model and the exported ONNX differ by up to half a bias step per
    channel, enough to flip roundings downstream. Per-channel inputs keep a float bias, as in export.
    """
    for rec in records.values():
        node = node_by_name(gm, rec.layer)
        bias = node.args[2] if len(node.args) > 2 else None
        act = gm.get_submodule(rec.act_module)
        if bias is None or bias.op != "get_attr" or act.qparams is None or act.qparams.axis is not None:
            continue
        if rec.float_bias is None:
            rec.float_bias = get_attr(gm, bias.target).detach().clone()
        step = act.qparams.scale[0] * rec.weight_qparams.scale.to(rec.float_bias.device)
        set_param(gm, bias.target, torch.round(rec.float_bias / step) * step)


def add_act_candidates(gm: fx.GraphModule, records: dict[str, LayerQuant], choose_granularity: bool,
                       choose_scheme: bool, seed: int = 0) -> None:
    """Give activation quantizers alternative schemes to be chosen later by the block output error.

    Symmetric vs asymmetric for every one; per-channel vs per-tensor where every consumer is a
    depthwise/grouped conv (their channels have very different ranges and never mix) and ONNX Runtime's
    fused int8 kernels accept it on both sides (``per_channel_legal``).
    """
    consumers: dict[str, set[str]] = {}
    for rec in records.values():
        consumers.setdefault(rec.act_module, set()).add(rec.consumer_op)
    count = 0
    for name, ops in consumers.items():
        module: ActQuant = gm.get_submodule(name)
        base = module.spec
        per_channel = choose_granularity and ops == {"dwconv"} and per_channel_legal(gm, name)
        grans = {base.granularity} | ({"per_tensor", "per_channel"} if per_channel else set())
        schemes = {base.symmetric} | ({True, False} if choose_scheme else set())
        specs = {spec_label(s): s for s in (dataclasses.replace(base, granularity=g, symmetric=sym)
                                            for g in sorted(grans) for sym in sorted(schemes))}
        specs.pop(spec_label(base))
        if specs:
            module.add_candidates(specs, channel_axis=1, seed=seed + count)
            count += 1


# The rule for per-channel activation quantizers. ONNX Runtime fuses DQ → Conv/MatMul/Gemm → Q into
# QLinearConv / QLinearMatMul / QGemm, whose integer kernels take ONE scale and zero-point for the
# activation input and ONE for the output. Before fusing, it drops a Relu/Clip in front of a Q
# (ReluQuantFusion / ClipQuantFusion; releases differ in how strictly they check the zero-point) and moves
# Q/DQ across data-movement ops (QDQ propagation: MaxPool, Reshape, Transpose, Squeeze, Unsqueeze), so a
# quantizer separated from a quantized conv/linear only by such ops still lands on that fused kernel.
# A per-channel quantizer is therefore offered only when
#   - its tensor is not produced by a quantized conv/linear, directly or through these ops, as that
#     layer's only consumer (it would be the fused kernel's output zero-point; ONNX Runtime fuses a Q only
#     when it is the layer's sole consumer, so a residual branch reading the output keeps them apart), and
#   - no consumer's output reaches another quantizer through these ops (the consumer would be fused with
#     a per-channel input zero-point).
# Conservative on purpose: an op listed here that a given release does not fuse only costs a candidate.
aten = torch.ops.aten
FUSED_PASS_THROUGH = frozenset({
    aten.relu, aten.relu_, aten.relu6, aten.hardtanh, aten.hardtanh_, aten.clamp, aten.clamp_, aten.clamp_min,
    aten.max_pool2d, aten.max_pool2d_with_indices,
    aten.view, aten.reshape, aten.flatten, aten.permute, aten.transpose, aten.squeeze, aten.unsqueeze,
    aten.contiguous, aten.clone, aten.dropout, aten.alias,
})
QUANTIZED_LAYER_OPS = (aten.conv2d.default, aten.linear.default)


def per_channel_legal(gm: fx.GraphModule, act_module: str) -> bool:
    """Whether a per-channel form of ``act_module`` survives ONNX Runtime's QDQ fusion (see the rule above)."""
    node = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == act_module)
    producer = _skip_back(node.args[0])
    if producer.target in QUANTIZED_LAYER_OPS and _is_act_quant(gm, producer.args[0]) \
            and _only_path(producer, node):
        return False
    return not any(_reaches_quantizer(gm, layer) for layer in node.users)


def _passes_through(node: fx.Node) -> bool:
    if node.op != "call_function":
        return False
    return node.target is operator.getitem or getattr(node.target, "overloadpacket", None) in FUSED_PASS_THROUGH


def _skip_back(node: fx.Node) -> fx.Node:
    while _passes_through(node) and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return node


def _only_path(producer: fx.Node, quantizer: fx.Node) -> bool:
    """Whether the producer's output reaches nothing but ``quantizer`` (ONNX Runtime fuses a layer with its
    Q only when the Q is the layer's sole consumer; a residual branch reading the output prevents it)."""
    node = quantizer.args[0]
    while True:
        if len(node.users) != 1:
            return False
        if node is producer:
            return True
        node = node.args[0]


def _reaches_quantizer(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node``'s output is quantized again, directly or through pass-through ops."""
    for user in node.users:
        if _is_act_quant(gm, user) or (_passes_through(user) and _reaches_quantizer(gm, user)):
            return True
    return False


def _is_act_quant(gm: fx.GraphModule, node) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_module" and isinstance(gm.get_submodule(node.target),
                                                                               ActQuant)


def freeze_activations(gm: fx.GraphModule) -> dict[str, QParams]:
    """Choose every activation range. The MSE searches' freed temporaries stay resident in glibc's heap
    unless trimmed after each (edgenext_xx_small at 224² on an Intel Xeon: +950 MB over 51 quantizers,
    a 2.3 GB peak)."""
    frozen = {}
    for name, mod in gm.named_children():
        if isinstance(mod, ActQuant):
            frozen[name] = mod.freeze()
            release_freed_memory()
    return frozen
