"""Fallback units, and switching them between int8 and float inside the fake-quant graph.

A *unit* is the set of layers that read one activation quantizer (e.g. the q/k/v projections of an
attention block that share their LayerNorm output): reverting a unit to float removes that
quantizer and the weight quantizers of its layers, which is exactly what the bundle can express.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

from torch import fx

from ..quant.fakequant import ActQuant, LayerQuant, insert_quantizers
from ..trace.blocks import BlockMap
from ..trace.graphutil import get_attr, node_by_name, set_param


STAGES = ("recipe", "outliers", "budget", "latency")


@dataclass(frozen=True)
class Decision:
    """Why a unit stays in float: the stage that decided, the target whose timings decided it (latency only),
    and the sentence shown to users, rendered from the evidence when the decision was made. Code reads
    ``stage`` and ``target``, never the sentence."""
    stage: str
    reason: str
    target: str | None = None

    def fields(self) -> dict:
        return {"stage": self.stage, "target": self.target}


@dataclass(frozen=True)
class Unit:
    name: str                # the activation quantizer's module name
    layers: tuple[str, ...]
    block: str
    kind: str                # block kind of its first layer
    ops: tuple[str, ...]     # conv | dwconv | linear of its layers

    def to_dict(self) -> dict:
        return {"unit": self.name, "layers": list(self.layers), "block": self.block, "kind": self.kind,
                "ops": sorted(set(self.ops))}


def build_units(records: dict[str, LayerQuant], block_map: BlockMap) -> list[Unit]:
    """Units in execution order (the order of their first layer in the block map)."""
    kinds = {b.name: b.kind for b in block_map.blocks}
    order = {name: i for i, name in enumerate(block_map.layers)}
    groups: dict[str, list[str]] = {}
    for layer in sorted(records, key=order.__getitem__):
        groups.setdefault(records[layer].act_module, []).append(layer)
    units = []
    for act, layers in groups.items():
        block = block_map.layers[layers[0]].block
        units.append(Unit(act, tuple(layers), block, kinds.get(block, ""),
                          tuple(records[n].consumer_op for n in layers)))
    return units


class FloatSwitch:
    """Turns units float (and back) in a fake-quant graph in place: the activation quantizer passes its
    input through, the weights and biases go back to their float values."""

    def __init__(self, gm: fx.GraphModule, records: dict[str, LayerQuant]):
        self.gm = gm
        self.records = records
        self.floated: set[str] = set()

    def set_float(self, unit: Unit, on: bool) -> None:
        if (unit.name in self.floated) == on:
            return
        act: ActQuant = self.gm.get_submodule(unit.name)
        act.bypass = on
        for layer in unit.layers:
            self._swap_params(self.records[layer], on)
        (self.floated.add if on else self.floated.discard)(unit.name)

    def _swap_params(self, rec: LayerQuant, to_float: bool) -> None:
        weight_quant = self.gm.get_submodule(f"edgeq_weight_{rec.layer}")
        weight_quant.bypass = to_float
        if to_float:
            rec.saved_weight = get_attr(self.gm, rec.weight_target).detach().clone()
            set_param(self.gm, rec.weight_target, rec.float_weight)
        else:
            set_param(self.gm, rec.weight_target, rec.saved_weight)
        bias = _bias_target(self.gm, rec.layer)
        if bias is not None and rec.float_bias is not None:
            if to_float:
                rec.saved_bias = get_attr(self.gm, bias).detach().clone()
                set_param(self.gm, bias, rec.float_bias)
            else:
                set_param(self.gm, bias, rec.saved_bias)

    @contextlib.contextmanager
    def floating(self, units: list[Unit]):
        """Temporarily float ``units`` on top of the current state."""
        changed = [u for u in units if u.name not in self.floated]
        for u in changed:
            self.set_float(u, True)
        try:
            yield
        finally:
            for u in changed:
                self.set_float(u, False)

    @contextlib.contextmanager
    def only_quantized(self, keep: list[Unit], all_units: list[Unit]):
        """Temporarily float every unit except ``keep``."""
        keep_names = {u.name for u in keep}
        with self.floating([u for u in all_units if u.name not in keep_names]):
            yield


def _bias_target(gm: fx.GraphModule, layer: str) -> str | None:
    node = node_by_name(gm, layer)
    bias = node.args[2] if len(node.args) > 2 else None
    return bias.target if isinstance(bias, fx.Node) and bias.op == "get_attr" else None


def drop_units(float_gm: fx.GraphModule, records: dict[str, LayerQuant], act_qparams: dict,
               reverted: set[str]) -> tuple[dict[str, LayerQuant], dict]:
    """Records and activation qparams without the reverted units, named as the bundle will rebuild them.

    Activation quantizers are numbered in graph order when a bundle is read back, so removing units
    renames the others; ``float_gm`` (a fresh float graph of the same program) gives the new names.
    """
    kept = {n: r for n, r in records.items() if r.act_module not in reverted}
    plan = {n: (r.weight_spec, r.act_spec) for n, r in kept.items()}
    renamed = insert_quantizers(float_gm, plan)
    new_qparams, new_records = {}, {}
    for layer, rec in kept.items():
        new_name = renamed[layer].act_module
        new_qparams[new_name] = act_qparams[rec.act_module]
        new_records[layer] = dataclasses.replace(rec, act_module=new_name)
    return new_records, new_qparams


