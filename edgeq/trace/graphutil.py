"""Small helpers for reading and replacing parameters of an fx.GraphModule by dotted target."""
from __future__ import annotations

import torch
from torch import fx


def get_attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def set_param(gm: fx.GraphModule, target: str, value: torch.Tensor) -> None:
    *path, name = target.split(".")
    owner = gm
    for part in path:
        owner = getattr(owner, part)
    setattr(owner, name, torch.nn.Parameter(value.detach().contiguous(), requires_grad=False))


def node_by_name(gm: fx.GraphModule, name: str) -> fx.Node:
    for node in gm.graph.nodes:
        if node.name == name:
            return node
    raise KeyError(name)
