"""Graphs converted from ONNX (onnx2torch) made capturable by torch.export.

onnx2torch passes ONNX's shape-like operands (Reshape shapes, Squeeze/Unsqueeze axes, Slice starts …) as
integer tensors, stored in the module or computed from ``Shape`` nodes, and its modules branch on their
values (``torch.any(shape == 0)``, ``axes.tolist()``). torch.export treats stored tensors as data, cannot
decide those branches, and refuses the whole model ("Could not guard on data-dependent expression"). A
converted graph is captured at a fixed input shape anyway (ONNX export bakes the batch into its
reshapes), so these operands are constants: they are read off one run on the example input and written
back into the graph as constants torch.export can see through — each Reshape as a plain
``torch.reshape(x, (d0, d1, …))`` (Slice, Split and Expand likewise, with fixed bounds, sizes and shapes), every
other small integer operand as ``torch.tensor([...])`` built in the graph (torch.export propagates such
constants).
"""
from __future__ import annotations

import torch
from torch import fx

MAX_OPERAND = 16   # elements: shapes, axes and slice bounds, never weights or activations


def fold_reshape_shapes(module: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> int:
    """Rewrite the shape-like operands of a converted graph in place; returns how many were folded."""
    if not isinstance(module, fx.GraphModule) or not any(
            n.op == "call_module" and _converted(module, n) for n in module.graph.nodes):
        return 0
    static, operands = _observe(module, example)
    graph = module.graph
    for node, (fn, args) in static.items():
        with graph.inserting_before(node):
            folded = graph.call_function(fn, (node.args[0], *args))
        node.replace_all_uses_with(folded)
        graph.erase_node(node)
    for (node, i), values in operands.items():
        with graph.inserting_before(node):
            const = graph.call_function(torch.tensor, (values,), {"dtype": torch.int64})
        node.update_arg(i, const)
    linears = _matmuls_as_linear(module)
    graph.eliminate_dead_code()
    module.recompile()
    return len(static) + len(operands) + linears


def _converted(module: fx.GraphModule, node: fx.Node) -> bool:
    return type(module.get_submodule(node.target)).__module__.startswith("onnx2torch.")


def _static_reshape(module, x, shape):
    """ONNX Reshape with its shape known: 0 copies the input's dimension."""
    dims = tuple(int(x.shape[i]) if int(d) == 0 else int(d) for i, d in enumerate(shape.tolist()))
    return torch.reshape, (dims,)


def _static_slice(module, x, starts, ends, axes=None, steps=None):
    """ONNX Slice with its bounds known, as onnx2torch's own indexing on Python slices."""
    from onnx2torch.node_converters.slice import _do_slice, _get_slices
    flip, pos, neg = _get_slices(starts.tolist(), ends.tolist(), axes, steps)   # axes/steps: tensors or None
    return _do_slice, (flip, pos, neg)


def _static_expand(module, x, shape):
    """ONNX Expand (bidirectional broadcasting) to its known shape: onnx2torch builds ``torch.Size(shape)`` from
    the tensor, which torch.export cannot (timm's mobilevitv2 exported by torch's TorchScript exporter)."""
    return torch.broadcast_to, (tuple(torch.broadcast_shapes(x.shape, tuple(int(d) for d in shape.tolist()))),)


def _static_split(module, x, split=None):
    """ONNX Split (opset 13+: sizes as an input) into its known sizes; onnx2torch's ``split.tolist()`` gives
    torch.export unbacked sizes it cannot check against the axis (timm's mobilevitv2, its q/k/v split)."""
    sizes = split.tolist() if split is not None else x.shape[module.axis] // module.num_splits
    return torch.split, (sizes, module.axis)


# onnx2torch modules whose shape-like operands decide Python-level control flow: replaced outright (each
# form gets the module and its arguments on the example input, and gives the function and extra arguments
# that replace it)
STATIC_FORMS = {"OnnxReshape": _static_reshape, "OnnxSlice": _static_slice, "OnnxExpand": _static_expand,
                "OnnxSplit13": _static_split}


def _observe(module: fx.GraphModule, example) -> tuple[dict, dict]:
    """Per replaced node its static form (function, extra args); per (node, arg index) the value of a small
    integer operand of any other converted module."""
    static, operands = {}, {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            if n.op == "call_module" and _converted(module, n):
                args, _ = self.fetch_args_kwargs_from_env(n)
                converted = module.get_submodule(n.target)
                form = STATIC_FORMS.get(type(converted).__name__)
                if form is not None:
                    static[n] = form(converted, *args)
                else:
                    for i, a in enumerate(args[1:], start=1):
                        if isinstance(a, torch.Tensor) and not a.is_floating_point() and a.numel() <= MAX_OPERAND \
                                and isinstance(n.args[i], fx.Node):
                            operands[(n, i)] = a.tolist()
            return super().run_node(n)

    with torch.no_grad():
        Recorder(module).run(*example)
    return static, operands


def _matmuls_as_linear(module: fx.GraphModule) -> int:
    """``MatMul(x, W)`` with a stored 2-D weight (how ONNX writes nn.Linear on 3-D inputs) becomes
    ``linear(x, Wᵀ)``, and a following ``Add`` of a stored 1-D bias its bias: edgeq quantizes linear layers,
    and the exported ONNX has the same MatMul + Add again."""
    graph, count = module.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_module" or type(module.get_submodule(node.target)).__name__ != "OnnxMatMul":
            continue
        weight = _stored(module, node.args[1])
        if weight is None or weight.dim() != 2 or not weight.is_floating_point():
            continue
        name = f"edgeq_linear_{count}"
        module.register_parameter(f"{name}_weight", torch.nn.Parameter(weight.t().contiguous(), requires_grad=False))
        bias_add, bias = _bias_add(module, node, weight.shape[1])
        if bias is not None:
            module.register_parameter(f"{name}_bias", torch.nn.Parameter(bias.clone(), requires_grad=False))
        with graph.inserting_before(node):
            args = (node.args[0], graph.get_attr(f"{name}_weight"),
                    graph.get_attr(f"{name}_bias") if bias is not None else None)
            linear = graph.call_function(torch.nn.functional.linear, args)
        (bias_add or node).replace_all_uses_with(linear)
        if bias_add is not None:
            graph.erase_node(bias_add)
        graph.erase_node(node)
        count += 1
    return count


def _stored(module: fx.GraphModule, node) -> torch.Tensor | None:
    if isinstance(node, fx.Node) and node.op == "get_attr":
        value = module
        for part in node.target.split("."):
            value = getattr(value, part)
        return value.detach() if isinstance(value, torch.Tensor) else None
    return None


def _bias_add(module: fx.GraphModule, matmul: fx.Node, features: int):
    """The ``Add`` of a stored [features] bias that is the MatMul's only user, and that bias."""
    users = list(matmul.users)
    if len(users) != 1 or users[0].op != "call_module":
        return None, None
    add = users[0]
    op = module.get_submodule(add.target)
    if type(op).__name__ != "OnnxBinaryMathOperation" or getattr(op, "math_op_function", None) is not torch.add:
        return None, None
    other = add.args[0] if add.args[1] is matmul else add.args[1]
    bias = _stored(module, other)
    if bias is None or tuple(bias.shape) != (features,):
        return None, None
    return add, bias
