"""Blocks for flat graphs, read off the graph itself.

The block map groups layers by the module hierarchy (``stages.2.1`` …). A model without one — converted
from ONNX (onnx2torch names its modules after ONNX nodes, ``conv3/Conv``, and MatMul+Add become bare linear
ops), or a plain ``nn.Sequential`` of layers — would get one block, and so one reconstruction region, per
layer; BRECQ learns blocks because a block's layers compensate each other's rounding.

Here a block is a *residual span*: the layers between a value and the residual add that reads it again
(a ResNet/ConvNeXt block, a transformer's attention or MLP branch). Nested spans give the inner ones (each
still a multi-layer branch). Layers outside every span form *chains* of at most ``CHAIN_LAYERS`` consecutive
layers; the chain before the first span is the stem, the one after the last span the head.
"""
from __future__ import annotations

from torch import fx

CHAIN_LAYERS = 3


def is_flat(layers: dict) -> bool:
    """True when no layer's module path carries structure: converted graphs (ONNX node names such as
    ``conv3/Conv``, or none for MatMul+Add turned linear) and a top-level ``nn.Sequential`` of layers
    (paths ``0``, ``1`` …). Named modules (``stem``, ``mid``) keep the hierarchy's blocks."""
    def structureless(path: str) -> bool:
        return not path or "/" in path or path.isdigit()
    return len(layers) >= 4 and all(structureless(layer.module) for layer in layers.values())


def graph_units(nodes: list[fx.Node], layers: dict, residual_ops, attention_ops) -> tuple[dict[str, str], set, set]:
    """(unit key per layer and per attention op, stem layers, head units)."""
    index = {n: i for i, n in enumerate(nodes)}
    layer_nodes = [n for n in nodes if n.name in layers]
    spans = _innermost(_residual_spans(nodes, index, layer_nodes, residual_ops))
    units: dict[str, str] = {}
    for k, (start, end, members) in enumerate(spans):
        for n in members:
            units[n.name] = f"residual{k + 1}"
        for n in nodes[start:end + 1]:
            if n.target in attention_ops:
                units[n.name] = f"residual{k + 1}"
    chains = _chains(layer_nodes, set(units))
    # without any span, the first chain is the stem and the last the head
    first_span = min((start for start, _, _ in spans), default=index[chains[0][-1]] + 1 if chains else 0)
    last_span = max((end for _, end, _ in spans), default=index[chains[-1][0]] - 1 if chains else 0)
    stem, head = set(), set()
    for k, chain in enumerate(chains):
        key = f"chain{k + 1}"
        for n in chain:
            units[n.name] = key
        if index[chain[-1]] < first_span:
            stem.update(n.name for n in chain)
        elif index[chain[0]] > last_span:
            head.add(key)
    return units, stem, head


def _residual_spans(nodes, index, layer_nodes, residual_ops) -> list[tuple[int, int, list[fx.Node]]]:
    """(index of the skip value, index of the add, layers on the branch) for every identity residual add."""
    spans = []
    for add in nodes:
        if add.target not in residual_ops or len(add.args) < 2:
            continue
        a, b = add.args[:2]
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
            continue
        for skip, branch in ((a, b), (b, a)):
            upstream = _ancestors(branch)
            if skip in upstream:
                members = [n for n in layer_nodes if index[skip] < index[n] < index[add] and n in upstream]
                if len(members) >= 2:
                    spans.append((index[skip], index[add], members))
                break
    return spans


def _ancestors(node: fx.Node) -> set[fx.Node]:
    """``node`` and every value it depends on."""
    stack, seen = [node], set()
    while stack:
        cur = stack.pop()
        if cur not in seen:
            seen.add(cur)
            stack.extend(cur.all_input_nodes)
    return seen


def _innermost(spans: list) -> list:
    """Spans that share no layer with an accepted smaller one, in graph order."""
    chosen: list = []
    taken: set = set()
    for span in sorted(spans, key=lambda s: (len(s[2]), s[0])):
        if not taken & {n.name for n in span[2]}:
            chosen.append(span)
            taken |= {n.name for n in span[2]}
    return sorted(chosen, key=lambda s: s[0])


def _chains(layer_nodes: list[fx.Node], in_span: set[str]) -> list[list[fx.Node]]:
    """Runs of consecutive layers outside every span, cut into chains of at most CHAIN_LAYERS."""
    chains: list[list[fx.Node]] = []
    open_chain = False
    for n in layer_nodes:
        if n.name in in_span:
            open_chain = False
        elif open_chain and len(chains[-1]) < CHAIN_LAYERS:
            chains[-1].append(n)
        else:
            chains.append([n])
            open_chain = True
    return chains
