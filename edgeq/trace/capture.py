"""Capture a model with torch.export and fold BatchNorm into the producing conv/linear.

The result is an ``fx.GraphModule`` over ATen ops (conv2d, linear, scaled_dot_product_attention…)
whose nodes keep ``nn_module_stack`` metadata; everything downstream works on it, so edgeq never
needs the user's Python code once a model is captured.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import fx

from ..errors import InputShapeError, TraceError
from ..models.intake import LoadedModel
from .graphutil import get_attr, set_param

aten = torch.ops.aten
BN_OPS = (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default)
# ops that only move data around: BatchNorm after them still normalises the producer's channels
PASS_THROUGH = (aten.flatten.using_ints, aten.view.default, aten.reshape.default)
# ops that read only the shape of their second argument (LeViT's ``bn(x.flatten(0, 1)).reshape_as(x)``)
SHAPE_ONLY = (aten.reshape_as.default, aten.view_as.default, aten.expand_as.default)


def example_inputs(loaded: LoadedModel, batch: int, samples=None) -> tuple[torch.Tensor, ...]:
    """Example inputs at ``batch``: the first calibration samples when given (token ids must be valid
    ids, not noise), else random floats / zeros for integer inputs."""
    if samples is not None:
        from ..samples import as_samples
        arrays = as_samples(samples).take(slice(0, max(batch, 16))).uniform().inputs
        return tuple(torch.from_numpy(np.resize(a, (batch, *a.shape[1:])).astype(a.dtype)) for a in arrays)
    out = []
    for spec in loaded.input_specs:
        shape = (batch, *spec.shape[1:])
        out.append(torch.randn(shape) if spec.dtype.startswith("float") else torch.zeros(shape, dtype=torch.int64))
    return tuple(out)


def dynamic_shapes(loaded_or_specs) -> tuple[dict, ...]:
    """torch.export dynamic shapes: the batch axis of every input, plus the declared width/time axis."""
    specs = getattr(loaded_or_specs, "input_specs", loaded_or_specs)
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes = []
    for i, spec in enumerate(specs):
        dims = {0: batch}
        if i == 0 and spec.dynamic:
            axis, lo, hi = spec.dynamic
            # AUTO lets torch.export derive the constraints a strided conv front end implies
            # (e.g. width a multiple of 4); has_dynamic_axis then checks it stayed dynamic
            dims[axis] = torch.export.Dim.AUTO(min=lo, max=hi)
        shapes.append(dims)
    return tuple(shapes)


def capture(loaded: LoadedModel, samples=None) -> torch.export.ExportedProgram:
    """torch.export the model with a dynamic batch axis (static if the model forbids it), and the
    declared dynamic width/time axis, which must stay dynamic.

    A .pt2 program is used as it is. Callers run ``check_input_shape`` first, so that a wrong shape
    gets a clear sentence instead of an export trace.
    """
    if loaded.exported is not None:
        return loaded.exported
    from .converted import fold_reshape_shapes
    if fold_reshape_shapes(loaded.module, example_inputs(loaded, loaded.input_spec.shape[0], samples)):
        from .. import ui
        ui.log("a graph converted from ONNX: its shape operands were fixed at the input shape for torch.export")
    # batch 2 as the example: a batch of 1 would be specialised to a constant by torch.export
    batched = example_inputs(loaded, 2, samples)
    dynamic = loaded.input_spec.dynamic
    try:
        exported = torch.export.export(loaded.module, batched, dynamic_shapes=dynamic_shapes(loaded))
        if has_dynamic_batch(exported) and (not dynamic or has_dynamic_axis(exported, dynamic[0])):
            return exported
    except Exception as exc:  # noqa: BLE001 - retry with the static shape below
        if dynamic:
            raise TraceError(f"torch.export could not capture {loaded.spec} with axis {dynamic[0]} dynamic "
                             f"({dynamic[1]}..{dynamic[2]}): {type(exc).__name__}: {_first_line(exc)}.") from None
    if dynamic:
        raise TraceError(f"{loaded.spec} fixes axis {dynamic[0]} of its input to {loaded.input_spec.shape[dynamic[0]]} "
                         f"(its code uses the size as a constant), so it cannot run at {dynamic[1]}..{dynamic[2]}.")
    try:
        return torch.export.export(loaded.module, example_inputs(loaded, loaded.input_spec.shape[0], samples))
    except Exception as exc:  # noqa: BLE001
        raise TraceError(f"torch.export could not capture {loaded.spec}: "
                         f"{type(exc).__name__}: {_first_line(exc)}.") from None


def check_input_shape(loaded: LoadedModel, samples=None) -> None:
    """Run the eager model once on the input shape; a failure means the shape is wrong."""
    if loaded.module is None:
        return
    shapes = ", ".join("x".join(map(str, s.shape)) for s in loaded.input_specs)
    try:
        with torch.no_grad():
            loaded.module(*example_inputs(loaded, loaded.input_spec.shape[0], samples))
    except Exception as exc:  # noqa: BLE001 - any failure here means the shape is wrong
        raise InputShapeError(f"{loaded.spec} does not accept inputs shaped {shapes}: "
                              f"{type(exc).__name__}: {_first_line(exc)}.") from None


def _user_inputs(exported: torch.export.ExportedProgram) -> list:
    names = {s.arg.name for s in exported.graph_signature.input_specs if s.kind.name == "USER_INPUT"}
    return [n for n in exported.graph.nodes if n.op == "placeholder" and n.name in names
            and isinstance(n.meta.get("val"), torch.Tensor)]


def has_dynamic_batch(exported: torch.export.ExportedProgram) -> bool:
    inputs = _user_inputs(exported)
    return bool(inputs) and not isinstance(inputs[0].meta["val"].shape[0], int)


def has_dynamic_axis(exported: torch.export.ExportedProgram, axis: int) -> bool:
    inputs = _user_inputs(exported)
    return bool(inputs) and not isinstance(inputs[0].meta["val"].shape[axis], int)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else "")[:200]


def to_graph_module(exported: torch.export.ExportedProgram) -> fx.GraphModule:
    # the unlifted module is always in inference form (dropout/BN were captured in eval mode);
    # it refuses .train()/.eval(), so edgeq never calls them on it
    return exported.module()


def fold_batchnorm(gm: fx.GraphModule) -> list[dict]:
    """Fold eval-mode BatchNorm into a preceding conv2d/linear when the BN is its only consumer.

    Returns one record per folded pair. Unfoldable BNs (shared producers, BN on a block input)
    stay in the graph and run in float.
    """
    folded = []
    for bn in list(gm.graph.nodes):
        if bn.op != "call_function" or bn.target not in BN_OPS:
            continue
        producer, chain = _producer_through(bn.args[0])
        if producer is None or not _foldable(gm, producer, chain, bn):
            continue
        _fold_pair(gm, producer, bn)
        folded.append({"layer": producer.name, "batchnorm": bn.name})
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return folded


def _producer_through(node: fx.Node) -> tuple[fx.Node | None, list[fx.Node]]:
    chain = []
    while node.op == "call_function" and node.target in PASS_THROUGH:
        chain.append(node)
        node = node.args[0]
    if node.op == "call_function" and node.target in (aten.conv2d.default, aten.linear.default):
        return node, chain
    return None, chain


def _foldable(gm: fx.GraphModule, producer: fx.Node, chain: list[fx.Node], bn: fx.Node) -> bool:
    path = [producer, *chain]
    if any(len(_value_users(n)) != 1 for n in path):
        return False
    weight = producer.args[1]
    if weight.op != "get_attr" or len(weight.users) != 1:
        return False
    bias = producer.args[2] if len(producer.args) > 2 else None
    if bias is not None and (bias.op != "get_attr" or len(bias.users) != 1):
        return False
    if any(a is None or a.op != "get_attr" for a in bn.args[3:5]):  # running stats
        return False
    if producer.target == aten.linear.default:
        # BN must normalise the linear's output features: the last dim folded into dim 1 of a 2-D view
        out_shape = bn.args[0].meta.get("val").shape if "val" in bn.args[0].meta else None
        features = _param(gm, weight).shape[0]
        return out_shape is not None and len(out_shape) == 2 and out_shape[1] == features
    return True


def _value_users(node: fx.Node) -> list[fx.Node]:
    """Users that read the node's values (not just its shape)."""
    return [u for u in node.users
            if not (u.target in SHAPE_ONLY and u.args[0] is not node)]


def _param(gm: fx.GraphModule, node: fx.Node | None) -> torch.Tensor | None:
    if node is None:
        return None
    return get_attr(gm, node.target)


def _fold_pair(gm: fx.GraphModule, producer: fx.Node, bn: fx.Node) -> None:
    args = list(bn.args) + [None] * 8
    if bn.target == aten.batch_norm.default:  # (x, w, b, mean, var, training, momentum, eps, cudnn)
        gamma, beta, mean, var, eps = args[1], args[2], args[3], args[4], args[7]
    else:  # _native_batch_norm_legit_no_training(x, w, b, mean, var, momentum, eps)
        gamma, beta, mean, var, eps = args[1], args[2], args[3], args[4], args[6]
    mean_t, var_t = _param(gm, mean), _param(gm, var)
    gamma_t = _param(gm, gamma) if gamma is not None else torch.ones_like(mean_t)
    beta_t = _param(gm, beta) if beta is not None else torch.zeros_like(mean_t)
    factor = gamma_t / torch.sqrt(var_t + float(eps if eps is not None else 1e-5))
    weight_node = producer.args[1]
    weight = _param(gm, weight_node).detach()
    shape = (-1,) + (1,) * (weight.ndim - 1)
    set_param(gm, weight_node.target, (weight * factor.view(shape)).contiguous())
    bias_node = producer.args[2] if len(producer.args) > 2 else None
    bias = _param(gm, bias_node).detach() if bias_node is not None else torch.zeros_like(mean_t)
    new_bias = ((bias - mean_t) * factor + beta_t).detach().contiguous()
    if bias_node is None:
        target = weight_node.target.rsplit(".", 1)[0] + ".edgeq_folded_bias" if "." in weight_node.target \
            else weight_node.target + "_edgeq_folded_bias"
        set_param(gm, target, new_bias)
        with gm.graph.inserting_before(producer):
            bias_node = gm.graph.get_attr(target)
        producer.args = (producer.args[0], weight_node, bias_node, *producer.args[3:]) \
            if len(producer.args) >= 3 else (producer.args[0], weight_node, bias_node)
    else:
        set_param(gm, bias_node.target, new_bias)
    _bypass_bn(bn)


def _bypass_bn(bn: fx.Node) -> None:
    """Route BN consumers to its input; the tuple-returning variant is read through getitem."""
    source = bn.args[0]
    for user in list(bn.users):
        if user.op == "call_function" and user.target.__name__ == "getitem":
            if user.args[1] == 0:
                user.replace_all_uses_with(source)
        else:
            user.replace_input_with(bn, source)
