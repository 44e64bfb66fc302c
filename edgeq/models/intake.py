"""Model intake: turn a ``--model`` spec into an eval-mode model plus its input and preprocessing spec.

Specs: ``zoo:NAME``, ``timm:NAME`` (+ ``--weights``), ``path/to/file.py:factory``,
``package.module:factory`` (zero-argument callables returning an nn.Module) and ``file.pt2``
(a saved torch.export program).
"""
from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError, InputShapeError, ModelSpecError
from .zoo import FASHION_MEAN, FASHION_STD, ZOO

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """The model's input: shape (batch first) and how raw images are turned into it."""

    shape: tuple[int, ...]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    name: str = "input"

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 4

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "InputSpec":
        return cls(shape=tuple(data["shape"]), mean=tuple(data["mean"]), std=tuple(data["std"]),
                   name=data.get("name", "input"))


@dataclass
class LoadedModel:
    spec: str
    module: torch.nn.Module | None
    input_spec: InputSpec
    exported: "torch.export.ExportedProgram | None" = None
    details: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {"spec": self.spec, **self.details}


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    if not re.fullmatch(r"\d+(x\d+)*", text.strip()):
        raise InputShapeError(f"--input-shape must look like 1x3x224x224, got {text!r}.")
    shape = tuple(int(v) for v in text.strip().split("x"))
    if any(v <= 0 for v in shape):
        raise InputShapeError(f"--input-shape dimensions must be positive, got {text!r}.")
    return shape


def load_model(spec: str, weights: str | None = None, num_classes: int | None = None,
               in_chans: int | None = None, input_shape: tuple[int, ...] | None = None,
               trust_pickle: bool = False) -> LoadedModel:
    """Resolve a model spec; raises ModelSpecError / CheckpointError / InputShapeError."""
    if spec.startswith("zoo:"):
        loaded = _load_zoo(spec[4:], input_shape)
    elif spec.startswith("timm:"):
        loaded = _load_timm(spec[5:], weights, num_classes, in_chans, input_shape, trust_pickle)
    elif spec.endswith(".pt2"):
        loaded = _load_pt2(Path(spec), input_shape)
    elif ":" in spec:
        loaded = _load_factory(spec, input_shape)
    else:
        raise ModelSpecError(f"unknown model spec {spec!r}: use zoo:NAME, timm:NAME, "
                             f"path/to/file.py:factory, package.module:factory or a .pt2 file.")
    if weights and not spec.startswith("timm:"):
        if loaded.module is None:
            raise ModelSpecError("--weights cannot be applied to a .pt2 program; its weights are inside it.")
        load_state_dict_file(loaded.module, Path(weights), spec, trust_pickle)
        loaded.details["weights"] = str(weights)
    return loaded


def _load_zoo(name: str, input_shape) -> LoadedModel:
    if name not in ZOO:
        raise ModelSpecError(f"unknown zoo model {name!r}: the zoo has {', '.join(ZOO)}.")
    entry = ZOO[name]
    if not entry.checkpoint.exists():
        raise ModelSpecError(f"zoo model {name!r} has no trained checkpoint; run scripts/train_zoo.py {name}.")
    import timm
    module = timm.create_model(entry.timm_name, **entry.create_kwargs())
    load_state_dict_file(module, entry.checkpoint, f"zoo:{name}", trust_pickle=False)
    shape = _check_override(entry.input_shape, input_shape, f"zoo:{name}")
    return LoadedModel(f"zoo:{name}", module.eval(),
                       InputSpec(shape, FASHION_MEAN * entry.in_chans, FASHION_STD * entry.in_chans),
                       details={"source": "zoo", "arch": entry.timm_name, **entry.create_kwargs(),
                                "training": entry.training_record()})


def _check_override(native: tuple, requested, spec: str) -> tuple:
    if requested is None or tuple(requested) == tuple(native):
        return tuple(native)
    if len(requested) != len(native) or requested[1] != native[1]:
        raise InputShapeError(f"{spec} takes inputs shaped {_fmt(native)}, not {_fmt(requested)}.")
    return tuple(requested)


def _fmt(shape) -> str:
    return "x".join(str(v) for v in shape)


def _load_timm(name: str, weights, num_classes, in_chans, input_shape, trust_pickle) -> LoadedModel:
    import timm
    if not timm.is_model(name):
        raise ModelSpecError(f"unknown timm model {name!r} (timm {timm.__version__}); "
                             f"see timm.list_models().")
    kwargs = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    if input_shape is not None and _takes_img_size(name):
        kwargs["img_size"] = tuple(input_shape[-2:])
    try:
        module = timm.create_model(name, pretrained=False, **kwargs)
    except Exception as exc:  # noqa: BLE001 - timm raises many types for bad kwargs
        raise ModelSpecError(f"timm could not build {name!r} with {kwargs}: {exc}.") from None
    if weights:
        load_state_dict_file(module, Path(weights), f"timm:{name}", trust_pickle)
    cfg = module.pretrained_cfg or {}
    chans = in_chans or cfg.get("input_size", (3,))[0]
    size = tuple(cfg.get("input_size", (3, 224, 224))[1:])
    native = (1, chans, *size)
    shape = tuple(input_shape) if input_shape else native
    if len(shape) != 4 or shape[1] != chans:
        raise InputShapeError(f"timm:{name} takes inputs shaped 1x{chans}xHxW, not {_fmt(shape)}.")
    mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
    return LoadedModel(f"timm:{name}", module.eval(), InputSpec(shape, tuple(mean), tuple(std)),
                       details={"source": "timm", "arch": name, **kwargs,
                                "weights": str(weights) if weights else "random-init"})


def _takes_img_size(name: str) -> bool:
    """Models whose attention tables depend on the resolution must be built for it."""
    return any(name.startswith(p) for p in ("levit", "efficientformer", "efficientvit_m"))


def load_state_dict_file(module: torch.nn.Module, path: Path, spec: str, trust_pickle: bool) -> None:
    state = read_checkpoint(path, trust_pickle)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state_dict of tensors.")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        first = (mismatched or missing or unexpected)[0]
        detail = (f"{first} is {tuple(state[first].shape)} in the file but {tuple(own[first].shape)} "
                  f"in the model" if mismatched else f"e.g. {first}")
        raise CheckpointError(f"{path} does not match {spec}: {len(missing)} missing, "
                              f"{len(unexpected)} unexpected and {len(mismatched)} mis-shaped tensors "
                              f"({detail}).")
    module.load_state_dict(state)


def read_checkpoint(path: Path, trust_pickle: bool):
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception:  # noqa: BLE001
            raise CheckpointError(f"{path} is not a readable safetensors file (corrupt or truncated).") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle_errors() as exc:
        if "Unsupported global" in str(exc) and not trust_pickle:
            raise CheckpointError(f"{path} contains pickled Python objects, not just tensors; "
                                  f"pass --trust-pickle only if you trust its author.") from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated).") from None


def pickle_errors() -> tuple:
    import pickle
    return (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
            OSError, AttributeError, ImportError, KeyError, IndexError, TypeError)


def _load_pt2(path: Path, input_shape) -> LoadedModel:
    if not path.is_file():
        raise ModelSpecError(f"program {path} does not exist.")
    try:
        exported = load_program(path)
    except Exception:  # noqa: BLE001 - torch raises many types for bad archives
        raise ModelSpecError(f"{path} is not a saved torch.export program (torch.export.save).") from None
    tensors = [n.meta.get("val") for n in exported.graph.nodes
               if n.op == "placeholder" and n.name in _user_input_names(exported)]
    if len(tensors) != 1 or not isinstance(tensors[0], torch.Tensor):
        raise ModelSpecError(f"{path} must take exactly one tensor input, it takes {len(tensors)}.")
    # a symbolic (dynamic) batch axis is profiled and described at batch 1
    native = tuple(1 if isinstance(d, torch.SymInt) else int(d) for d in tensors[0].shape)
    if input_shape is not None and tuple(input_shape)[1:] != native[1:]:
        raise InputShapeError(f"{path} was exported for inputs shaped {_fmt(native)}, not {_fmt(input_shape)}.")
    return LoadedModel(str(path), None, InputSpec(native), exported=exported,
                       details={"source": "pt2", "path": str(path)})


def load_program(path: Path) -> "torch.export.ExportedProgram":
    """torch.export.load without the warning-with-traceback torch logs before raising on bad files."""
    import logging
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        return torch.export.load(str(path))
    finally:
        logger.setLevel(level)


def _user_input_names(exported) -> set:
    from torch.export.graph_signature import InputKind
    return {s.arg.name for s in exported.graph_signature.input_specs if s.kind == InputKind.USER_INPUT}


def _load_factory(spec: str, input_shape) -> LoadedModel:
    target, _, attr = spec.rpartition(":")
    if not attr.isidentifier():
        raise ModelSpecError(f"model spec {spec!r} must end in ':factory', a Python function name.")
    module = _import_target(target, spec)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelSpecError(f"{target} has no callable named {attr!r}.")
    try:
        model = factory()
    except Exception as exc:  # noqa: BLE001 - user code
        raise ModelSpecError(f"{spec} raised {type(exc).__name__} when called: {exc}.") from None
    if not isinstance(model, torch.nn.Module):
        raise ModelSpecError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module.")
    if input_shape is None:
        input_shape = getattr(model, "edgeq_input_shape", None)
    if input_shape is None:
        raise InputShapeError(f"{spec} needs --input-shape (e.g. 1x3x224x224).")
    return LoadedModel(spec, model.eval(), InputSpec(tuple(input_shape)),
                       details={"source": "factory", "factory": spec})


def _import_target(target: str, spec: str):
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ModelSpecError(f"model file {path} does not exist.")
        name = f"edgeq_user_{path.stem}"
        mod_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        try:
            mod_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - user code
            raise ModelSpecError(f"importing {path} failed: {type(exc).__name__}: {exc}.") from None
        return module
    try:
        return importlib.import_module(target)
    except ImportError as exc:
        raise ModelSpecError(f"cannot import {target!r} for {spec!r}: {exc}.") from None
