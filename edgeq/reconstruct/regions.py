"""Cut the quantized graph into reconstruction regions, one per block (bridges joined to the block before).

A region is an interval of the graph's node order. Cuts between consecutive blocks are placed where
the fewest activation values are alive (typically right after a residual add), never where a live
value is not batch-major, so each region's inputs and outputs can be cached per calibration sample.
Nodes that do not depend on the input (weights, their quantizers, constant tables such as LeViT's
attention biases) are copied into every region that reads them; so are shape computations
(``sym_size``), which then read a cached tensor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import fx

from ..quant.fakequant import ActQuant
from ..trace.blocks import BlockMap


@dataclass
class Region:
    name: str                  # the blocks it covers: "a", "a + b" or "a … z"
    kinds: tuple[str, ...]
    layers: tuple[str, ...]    # quantized layers learned here
    inputs: list[str]          # cached values it reads (graph node names)
    outputs: list[str]         # values it produces that later regions or the model output read
    module: fx.GraphModule
    act_quantizers: list[str]  # ActQuant submodules owned (inserted) in this region
    last_use: dict[str, int]   # value name -> index of the last region that reads it


def run_region(region: Region, cache: dict, mode, value: str, batch_size: int, device: str) -> list[torch.Tensor]:
    """Region outputs for every cached sample, with the learners' ``mode`` set to ``value`` (float, hard or
    soft), in batches of ``batch_size``, back on the CPU in the caches' storage type (float16, see below)."""
    mode.value = value
    n = len(cache[region.inputs[0]])
    results: list[torch.Tensor] = []
    with torch.no_grad():
        for i in range(0, n, batch_size):
            outs = region.module(*[on_device(cache[k][i: i + batch_size], device) for k in region.inputs])
            if not results:  # filled in place: concatenating parts held every output twice at 224²
                results = [torch.empty((n, *o.shape[1:]), dtype=_storage_dtype(o)) for o in outs]
            for k, out in enumerate(outs):
                if results[k].dtype == torch.float16 and not bool(out.abs().amax() < HALF_MAX):
                    results[k] = results[k].float()   # beyond float16's range: this value stays float32
                results[k][i: i + len(out)] = out
    return results


# Cached activations (every calibration sample's region inputs and float targets) are stored as float16:
# at 224² they are most of reconstruction's memory, and float16's 2^-11 relative rounding is far below
# an 8-bit step (a cached quantized value keeps its integer) and the quantization error being learned.
HALF_MAX = 65504.0


def _storage_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float16 if t.dtype == torch.float32 else t.dtype


def on_device(t: torch.Tensor, device: str) -> torch.Tensor:
    """A cached tensor as the region computes with it (float16 storage back to float32)."""
    return t.to(device=device, dtype=torch.float32) if t.dtype == torch.float16 else t.to(device)


def plan_regions(gm: fx.GraphModule, block_map: BlockMap, quantized: set[str],
                 joint_bridges: bool = True) -> list[Region]:
    nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    dynamic = _input_dependent(nodes)
    groups = _groups(block_map, quantized, joint_bridges)
    if not groups:
        return []
    layer_nodes = {n.name: n for n in nodes if n.name in quantized}
    start = next(i for i, n in enumerate(nodes) if n.op != "placeholder")
    end = next(i for i, n in enumerate(nodes) if n.op == "output")
    cuts = [start]
    merged = [groups[0]]
    for group in groups[1:]:
        lo = max(index[layer_nodes[m]] for m in merged[-1][2]) + 1
        first = layer_nodes[group[2][0]]
        entry = first.args[0]
        hi = min(index[first], index[entry]) if _is_act_quant(gm, entry) else index[first]
        cut = _best_cut(nodes, index, dynamic, lo, hi)
        if cut is None:  # no clean boundary: learn the two blocks together
            merged[-1] = (merged[-1][0] + group[0], merged[-1][1] + group[1], merged[-1][2] + group[2])
            continue
        cuts.append(cut)
        merged.append(group)
    cuts.append(end)
    regions = _build_all(gm, nodes, dynamic, cuts, [(_join(names), kinds, members) for names, kinds, members in merged])
    _mark_last_use(regions)
    return regions


def _groups(block_map: BlockMap, quantized: set[str], joint_bridges: bool) -> list[tuple]:
    """(block names, kinds, layers) per region; a bridge joins the group before it."""
    groups: list[tuple] = []
    for block in block_map.blocks:
        members = [m for m in block.layers if m in quantized]
        if not members:
            continue
        if joint_bridges and block.kind == "bridge" and groups:
            names, kinds, layers = groups[-1]
            groups[-1] = (names + [block.name], kinds + (block.kind,), layers + members)
        else:
            groups.append(([block.name], (block.kind,), members))
    return groups


def _join(names: list[str]) -> str:
    return " + ".join(names) if len(names) <= 2 else f"{names[0]} … {names[-1]}"


def _is_act_quant(gm: fx.GraphModule, node) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_module" and isinstance(
        gm.get_submodule(node.target), ActQuant)


def _input_dependent(nodes: list[fx.Node]) -> set[fx.Node]:
    dynamic: set[fx.Node] = set()
    for n in nodes:
        if n.op == "placeholder" or any(a in dynamic for a in n.all_input_nodes):
            dynamic.add(n)
    return dynamic


def _is_tensor(node: fx.Node) -> bool:
    return isinstance(node.meta.get("val"), torch.Tensor)


def _best_cut(nodes, index, dynamic, lo: int, hi: int) -> int | None:
    """The cut position in [lo, hi] with the fewest live activation elements; ties go to the latest."""
    batch = _batch_dim(nodes)
    best, best_cost = None, math.inf
    for p in range(lo, hi + 1):
        cost = 0
        for n in _live(nodes, index, dynamic, p):
            if not _is_tensor(n):
                continue
            val = n.meta["val"]
            if val.dim() == 0 or str(val.shape[0]) != batch:
                cost = math.inf
                break
            cost += math.prod(int(d) for d in val.shape[1:])
        if cost <= best_cost and cost < math.inf:
            best, best_cost = p, cost
    return best


def _batch_dim(nodes: list[fx.Node]) -> str:
    placeholder = next(n for n in nodes if n.op == "placeholder")
    return str(placeholder.meta["val"].shape[0])


def _live(nodes, index, dynamic, p: int) -> list[fx.Node]:
    """Input-dependent values defined before position p and read at or after it."""
    return [n for n in nodes[:p] if n in dynamic and any(index[u] >= p for u in n.users)]


def _build_all(gm, nodes, dynamic, cuts: list[int], groups: list[tuple]) -> list[Region]:
    bodies = [[n for n in nodes[cuts[i]:cuts[i + 1]] if n in dynamic and n.op != "placeholder"]
              for i in range(len(groups))]
    inputs = [_region_inputs(body, set(body), dynamic) for body in bodies]
    model_output = next(n for n in nodes if n.op == "output")
    regions = []
    for i, (name, kinds, members) in enumerate(groups):
        needed_later = {n for later in inputs[i + 1:] for n in later} | set(model_output.all_input_nodes)
        outputs = [n for n in bodies[i] if n in needed_later]
        module = _subgraph(gm, bodies[i], inputs[i], outputs)
        owned = [n.target for n in bodies[i]
                 if n.op == "call_module" and isinstance(gm.get_submodule(n.target), ActQuant)]
        regions.append(Region(name, tuple(kinds), tuple(members), [n.name for n in inputs[i]],
                              [n.name for n in outputs], module, owned, {}))
    return regions


def _subgraph(gm: fx.GraphModule, body: list[fx.Node], inputs: list[fx.Node], outputs: list[fx.Node]
              ) -> fx.GraphModule:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {n: graph.placeholder(n.name) for n in inputs}

    def lookup(n: fx.Node) -> fx.Node:
        if n not in env:  # weights, constants and shape computations are copied in
            env[n] = graph.node_copy(n, lookup)
        return env[n]

    for n in body:
        env[n] = graph.node_copy(n, lookup)
    graph.output(tuple(env[n] for n in outputs))
    return fx.GraphModule(gm, graph)


def _region_inputs(body: list[fx.Node], inside: set, dynamic: set) -> list[fx.Node]:
    """Cached tensors the region reads; non-tensor values (sizes) are recomputed from their sources."""
    found: list[fx.Node] = []
    seen: set[fx.Node] = set()

    def visit(n: fx.Node) -> None:
        if n in inside or n in seen or n not in dynamic:
            return
        seen.add(n)
        if _is_tensor(n) or n.op == "placeholder":
            found.append(n)
        else:
            for a in n.all_input_nodes:
                visit(a)

    for n in body:
        for a in n.all_input_nodes:
            visit(a)
    return found


def _mark_last_use(regions: list[Region]) -> None:
    last: dict[str, int] = {}
    for i, region in enumerate(regions):
        for name in region.inputs:
            last[name] = i
    for region in regions:
        region.last_use = last


