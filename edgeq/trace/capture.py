"""Capture a model with torch.export and fold BatchNorm into the producing conv/linear.

The result is an ``fx.GraphModule`` over ATen ops (conv2d, linear, scaled_dot_product_attention…)
whose nodes keep ``nn_module_stack`` metadata; everything downstream works on it, so edgeq never
needs the user's Python code once a model is captured.
"""
from __future__ import annotations

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


def capture(loaded: LoadedModel) -> torch.export.ExportedProgram:
    """torch.export the model with a dynamic batch axis (static if the model forbids it).

    A .pt2 program is used as it is. Callers run ``check_input_shape`` first, so that a wrong shape
    gets a clear sentence instead of an export trace.
    """
    if loaded.exported is not None:
        return loaded.exported
    shape = loaded.input_spec.shape
    # batch 2 as the example: a batch of 1 would be specialised to a constant by torch.export
    batched = (torch.randn((2, *shape[1:])),)
    try:
        batch = torch.export.Dim("batch", min=1, max=4096)
        exported = torch.export.export(loaded.module, batched, dynamic_shapes=({0: batch},))
        if has_dynamic_batch(exported):
            return exported
    except Exception:  # noqa: BLE001 - retry with the static shape below
        pass
    try:
        return torch.export.export(loaded.module, (torch.randn(shape),))
    except Exception as exc:  # noqa: BLE001
        raise TraceError(f"torch.export could not capture {loaded.spec}: "
                         f"{type(exc).__name__}: {_first_line(exc)}.") from None


def check_input_shape(loaded: LoadedModel) -> None:
    """Run the eager model once on the input shape; a failure means the shape is wrong."""
    if loaded.module is None:
        return
    shape = loaded.input_spec.shape
    try:
        with torch.no_grad():
            loaded.module(torch.randn(shape))
    except Exception as exc:  # noqa: BLE001 - any failure here means the shape is wrong
        raise InputShapeError(f"{loaded.spec} does not accept inputs shaped {'x'.join(map(str, shape))}: "
                              f"{type(exc).__name__}: {_first_line(exc)}.") from None


def has_dynamic_batch(exported: torch.export.ExportedProgram) -> bool:
    for node in exported.graph.nodes:
        if node.op == "placeholder" and isinstance(node.meta.get("val"), torch.Tensor):
            if node.name in {s.arg.name for s in exported.graph_signature.input_specs
                             if s.kind.name == "USER_INPUT"}:
                return not isinstance(node.meta["val"].shape[0], int)
    return False


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
