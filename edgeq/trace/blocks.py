"""Partition a captured graph into blocks, from the graph alone (no per-model tables).

A *layer* is a quantizable op node (conv2d or linear). Layers are grouped by the deepest
indexed module that owns them (``stages.2.1``, ``blocks.4`` …, i.e. one element of a repeated
sequence); inside a unit that runs attention (softmax / scaled-dot-product) the children are split
into the attention part and the MLP part. Groups are kept contiguous in execution order.
Kinds are read off the graph:

- ``stem``: layers that compute the source of the network's first residual connection, or that
  precede every indexed block;
- ``head``: un-indexed layers after the last indexed block;
- ``attention``: units holding an attention op; ``mlp``: linear-only units, or the non-attention
  children of an attention block;
- ``bridge``: conv units that feed the first attention unit of a transformer run or take its
  output back (the conv→transformer transitions where hybrids lose accuracy);
- ``conv``: everything else.

Separately, a block is a *bridge candidate* when it is a bridge, or when it mixes along the spatial/time axes
with a convolution (kernel larger than 1) right next to a transformer unit: a convolutional stem or
subsampling front end feeding the first attention/MLP unit, a Conformer's convolution module between
self-attention and feed-forward, an MLP with a depthwise convolution. The mark is shown by ``edgeq inspect``
and does not change how the block is quantized.

A flat graph (no module hierarchy: converted from ONNX, or a plain ``nn.Sequential`` of layers) is grouped
from the graph instead: residual spans and chains (``flat_blocks``).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import torch
from torch import fx

from .flat_blocks import graph_units, is_flat
from .graphutil import get_attr

aten = torch.ops.aten
LAYER_OPS = {aten.conv2d.default: "conv", aten.linear.default: "linear"}
ATTENTION_OPS = (aten.scaled_dot_product_attention.default, aten.softmax.int, aten._softmax.default)
MATMUL_OPS = (aten.matmul.default, aten.bmm.default, aten.mm.default)
RESIDUAL_OPS = (aten.add.Tensor, aten.add_.Tensor)


@dataclass(frozen=True)
class Layer:
    name: str            # graph node name, stable across save/load of the bundle
    module: str          # owning module path, e.g. "stages.2.1.conv_kxk.conv"
    op: str              # conv | dwconv | linear
    weight_shape: tuple
    params: int
    macs: int
    block: str = ""


@dataclass(frozen=True)
class Block:
    name: str
    kind: str            # stem | conv | bridge | attention | mlp | head
    layers: tuple[str, ...]
    params: int
    macs: int
    bridge_candidate: bool = False


@dataclass(frozen=True)
class BlockMap:
    blocks: tuple[Block, ...]
    layers: "OrderedDict[str, Layer]"
    op_counts: dict = field(default_factory=dict)      # aten op -> count
    total_params: int = 0
    total_macs: int = 0

    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for b in self.blocks:
            counts[b.kind] = counts.get(b.kind, 0) + 1
        return counts

    def to_dict(self) -> dict:
        return {
            "total_params": self.total_params, "total_macs": self.total_macs,
            "kinds": self.kinds(), "op_counts": self.op_counts,
            "blocks": [asdict(b) for b in self.blocks],
            "layers": [asdict(layer) for layer in self.layers.values()],
        }


def module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path.removeprefix("L__self__").lstrip(".")


def build_block_map(gm: fx.GraphModule) -> BlockMap:
    nodes = list(gm.graph.nodes)
    layers = OrderedDict((n.name, _layer(gm, n)) for n in nodes if n.target in LAYER_OPS)
    units = _unit_keys(nodes, layers)
    flat = is_flat(layers)
    if flat:   # no module hierarchy to group by: residual spans and chains from the graph
        units, stem_layers, head_units = graph_units(nodes, layers, RESIDUAL_OPS, ATTENTION_OPS)
    else:
        stem_layers, head_units = _stem_layers(nodes, layers), set()
    segments = _contiguous(list(layers), units)
    attention_units = {units[n.name] for n in nodes if n.target in ATTENTION_OPS and n.name in units}
    preds = _layer_predecessors(nodes)
    extra_macs = _attention_macs(nodes, units)

    blocks = []
    for seg_name, unit, members in segments:
        kind = _kind(unit, members, layers, attention_units, stem_layers)
        blocks.append([seg_name, kind, members, unit])
    _mark_bridges(blocks, preds)
    if flat:
        for block in blocks:
            block[1] = "head" if block[3] in head_units else block[1]
    else:
        _mark_head(blocks, layers)

    candidates = _bridge_candidates(blocks, layers)
    final_blocks, final_layers = [], OrderedDict()
    for i, (seg_name, kind, members, unit) in enumerate(blocks):
        params = sum(layers[m].params for m in members)
        macs = sum(layers[m].macs for m in members) + extra_macs.get(unit, 0) * (seg_name == unit)
        final_blocks.append(Block(seg_name, kind, tuple(members), params, macs, i in candidates))
        for m in members:
            final_layers[m] = Layer(**{**asdict(layers[m]), "block": seg_name})
    op_counts: dict[str, int] = {}
    for n in nodes:
        if n.op == "call_function":
            key = str(n.target).removeprefix("aten.")
            op_counts[key] = op_counts.get(key, 0) + 1
    total_params = sum(p.numel() for p in gm.parameters())
    return BlockMap(tuple(final_blocks), final_layers, dict(sorted(op_counts.items())),
                    total_params, sum(b.macs for b in final_blocks))


def _layer(gm: fx.GraphModule, node: fx.Node) -> Layer:
    weight = _tensor(gm, node.args[1])
    out = node.meta["val"]
    op = LAYER_OPS[node.target]
    if op == "conv":
        groups = conv_groups(node)
        if groups > 1 and weight.shape[1] == 1:  # one input channel per group
            op = "dwconv"
        macs = _per_sample(out) * weight[0].numel()
    else:
        macs = _per_sample(out) * weight.shape[1]
    bias = _tensor(gm, node.args[2]) if len(node.args) > 2 and node.args[2] is not None else None
    params = weight.numel() + (bias.numel() if bias is not None else 0)
    return Layer(node.name, module_path(node), op, tuple(weight.shape), int(params), int(macs))


def conv_groups(node: fx.Node) -> int:
    return node.args[6] if len(node.args) > 6 else 1


def _per_sample(t: torch.Tensor) -> int:
    """Elements per batch item (MACs are reported for batch 1; the batch axis may be symbolic)."""
    count = 1
    for d in t.shape[1:]:
        count *= int(d)
    return count


def _tensor(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    return get_attr(gm, node.target) if node.op == "get_attr" else node.meta["val"]


def _indexed_key(path: str) -> tuple[str, str]:
    """(deepest indexed ancestor, the child right under it) of a module path."""
    parts = path.split(".") if path else []
    idx = max((i for i, p in enumerate(parts) if p.isdigit()), default=-1)
    if idx < 0:
        return "", ""
    return ".".join(parts[: idx + 1]), (parts[idx + 1] if idx + 1 < len(parts) else "")


def _unit_keys(nodes: list[fx.Node], layers: dict) -> dict[str, str]:
    """Unit key per layer and per attention op: its indexed block, split by child when it runs attention."""
    attention_blocks = {_indexed_key(module_path(n))[0] for n in nodes if n.target in ATTENTION_OPS}
    keys = {}
    for n in nodes:
        if n.name not in layers and n.target not in ATTENTION_OPS:
            continue
        path = module_path(n)
        block, child = _indexed_key(path)
        if not block:
            keys[n.name] = path.split(".")[0] if path else "model"
        elif block in attention_blocks and child:
            keys[n.name] = f"{block}.{child}"
        else:
            keys[n.name] = block
    return keys


def _contiguous(order: list[str], units: dict[str, str]) -> list[tuple[str, str, list[str]]]:
    """Split units into runs of consecutive layers; a unit interrupted by another gets '#2', '#3'…"""
    segments: list[tuple[str, str, list[str]]] = []
    seen: dict[str, int] = {}
    for name in order:
        unit = units[name]
        if segments and segments[-1][1] == unit:
            segments[-1][2].append(name)
            continue
        seen[unit] = seen.get(unit, 0) + 1
        seg_name = unit if seen[unit] == 1 else f"{unit}#{seen[unit]}"
        segments.append((seg_name, unit, [name]))
    return segments


def _kind(unit: str, members: list[str], layers: dict, attention_units: set, stem_layers: set) -> str:
    if all(m in stem_layers for m in members):
        return "stem"
    if unit in attention_units:
        return "attention"
    parent = unit.rsplit(".", 1)[0]
    in_attention_block = any(u.rsplit(".", 1)[0] == parent for u in attention_units) and parent != unit
    if all(layers[m].op == "linear" for m in members) or (
            in_attention_block and _pointwise(layers[members[0]]) and _pointwise(layers[members[-1]])):
        return "mlp"
    return "conv"


def _pointwise(layer: Layer) -> bool:
    return layer.op == "linear" or (layer.op == "conv" and layer.weight_shape[2:] == (1, 1))


def _stem_layers(nodes: list[fx.Node], layers: dict) -> set[str]:
    """Layers computing the skip input of the first residual add, plus un-indexed layers before any block."""
    ancestors_cache: dict[str, set[str]] = {}
    stem: set[str] = set()
    for n in nodes:
        if n.target in RESIDUAL_OPS and all(isinstance(a, fx.Node) for a in n.args[:2]):
            a, b = n.args[:2]
            skip = a if a.name in _ancestors(b, ancestors_cache) else b if b.name in _ancestors(a, ancestors_cache) else None
            if skip is not None:
                stem = {x for x in _ancestors(skip, ancestors_cache) | {skip.name} if x in layers}
                break
    for name, layer in layers.items():
        if _indexed_key(layer.module)[0]:
            break
        stem.add(name)
    return stem


def _ancestors(node: fx.Node, cache: dict[str, set[str]]) -> set[str]:
    if node.name in cache:
        return cache[node.name]
    result: set[str] = set()
    stack = list(node.all_input_nodes)
    while stack:
        cur = stack.pop()
        if cur.name in result:
            continue
        result.add(cur.name)
        stack.extend(cur.all_input_nodes)
    cache[node.name] = result
    return result


def _layer_predecessors(nodes: list[fx.Node]) -> dict[str, set[str]]:
    """For each layer, the nearest layers upstream of its activation input (through non-layer ops)."""
    preds = {}
    for n in nodes:
        if n.target not in LAYER_OPS:
            continue
        found, stack, seen = set(), [n.args[0]], set()
        while stack:
            cur = stack.pop()
            if not isinstance(cur, fx.Node) or cur.name in seen:
                continue
            seen.add(cur.name)
            if cur.target in LAYER_OPS:
                found.add(cur.name)
            else:
                stack.extend(cur.all_input_nodes)
        preds[n.name] = found
    return preds


def _mark_bridges(blocks: list[list], preds: dict[str, set[str]]) -> None:
    """Conv units right before a transformer run that feed it, and right after it that it feeds."""
    is_tf = [b[1] in ("attention", "mlp") for b in blocks]
    for i, (_, kind, members, _) in enumerate(blocks):
        if kind != "conv":
            continue
        if i + 1 < len(blocks) and blocks[i + 1][1] == "attention" and _feeds(members, blocks[i + 1][2], preds):
            blocks[i][1] = "bridge"
        elif i > 0 and is_tf[i - 1] and _feeds(blocks[i - 1][2], members, preds):
            blocks[i][1] = "bridge"


def _bridge_candidates(blocks: list[list], layers: dict) -> set[int]:
    """Indices of bridges and of blocks with a spatial/time convolution next to a transformer unit."""
    def spatial(members):
        return any(layers[m].op in ("conv", "dwconv") and any(k > 1 for k in layers[m].weight_shape[2:])
                   for m in members)

    def transformer(i):
        return 0 <= i < len(blocks) and blocks[i][1] in ("attention", "mlp")

    return {i for i, (_, kind, members, _) in enumerate(blocks)
            if kind == "bridge" or (kind != "head" and spatial(members) and (transformer(i - 1) or transformer(i + 1)))}


def _feeds(src: list[str], dst: list[str], preds: dict[str, set[str]]) -> bool:
    src_set = set(src)
    return any(preds.get(d, set()) & src_set for d in dst)


def _mark_head(blocks: list[list], layers: dict) -> None:
    for block in reversed(blocks):
        if any(_indexed_key(layers[m].module)[0] for m in block[2]):
            break
        block[1] = "head"


def _attention_macs(nodes: list[fx.Node], units: dict[str, str]) -> dict[str, int]:
    """MACs of attention products (not layers), credited to the unit that owns them."""
    macs: dict[str, int] = {}
    for n in nodes:
        if n.target == aten.scaled_dot_product_attention.default:
            q, k = n.args[0].meta["val"], n.args[1].meta["val"]
            count = 2 * _per_sample(q) * int(k.shape[-2])
        elif n.target in MATMUL_OPS:
            count = _per_sample(n.meta["val"]) * int(n.args[0].meta["val"].shape[-1])
        else:
            continue
        unit = units.get(n.name) or _owner_unit(n, units)
        macs[unit] = macs.get(unit, 0) + int(count)
    return macs


def _owner_unit(node: fx.Node, units: dict[str, str]) -> str:
    path = module_path(node)
    block, child = _indexed_key(path)
    candidates = [f"{block}.{child}", block, path.split(".")[0] if path else "model"]
    values = set(units.values())
    return next((c for c in candidates if c in values), candidates[-1])
