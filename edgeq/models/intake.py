"""Model intake: turn a ``--model`` spec into an eval-mode model plus its input and preprocessing spec.

Specs: ``zoo:NAME``, ``timm:NAME`` (+ ``--weights``), ``path/to/file.py:factory``,
``package.module:factory`` (zero-argument callables returning an nn.Module) and ``file.pt2``
(a saved torch.export program).
"""
from __future__ import annotations

import dataclasses
import importlib
import re
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError, InputShapeError, ModelSpecError
from .zoo import FASHION_MEAN, FASHION_STD, SPEECH_ZOO, ZOO

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """The model's input: shape (batch first) and how raw images are turned into it."""

    shape: tuple[int, ...]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    name: str = "input"
    dtype: str = "float32"                  # int64 for token ids
    dynamic: tuple[int, int, int] | None = None   # (axis, min, max): a variable width/time axis besides batch
    features: dict | None = field(default=None, hash=False)   # audio models: edgeq.audio.Features.to_dict()

    @property
    def is_image(self) -> bool:
        """Image inputs get image preprocessing (folders, the zoo sets); sequences and token ids never do."""
        return len(self.shape) == 4 and self.dtype.startswith("float")

    def audio_seconds(self) -> float | None:
        """Seconds of audio the example shape holds (speech models: [B, frames, mels]); None otherwise."""
        if self.features is None or len(self.shape) != 3:
            return None
        from ..audio import Features
        return round(Features.from_dict(self.features).seconds(self.shape[1]), 4)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "InputSpec":
        dynamic = data.get("dynamic")
        return cls(shape=tuple(data["shape"]), mean=tuple(data["mean"]), std=tuple(data["std"]),
                   name=data.get("name", "input"), dtype=data.get("dtype", "float32"),
                   dynamic=tuple(dynamic) if dynamic else None, features=data.get("features"))


@dataclass
class LoadedModel:
    spec: str
    module: torch.nn.Module | None
    input_spec: InputSpec
    exported: "torch.export.ExportedProgram | None" = None
    details: dict = field(default_factory=dict)
    extra_inputs: tuple[InputSpec, ...] = ()   # the second and later inputs of a multi-input model

    @property
    def input_specs(self) -> tuple[InputSpec, ...]:
        return (self.input_spec, *self.extra_inputs)

    def describe(self) -> dict:
        return {"spec": self.spec, **self.details}

    def with_input_dtypes(self, dtypes: list[str]) -> "LoadedModel":
        """Input dtypes learned from the calibration data (token ids are integers)."""
        specs = [dataclasses.replace(s, dtype=d) for s, d in zip(self.input_specs, dtypes)]
        return dataclasses.replace(self, input_spec=specs[0], extra_inputs=tuple(specs[1:]))


def parse_input_shape(text: str | None) -> tuple[int, ...] | tuple[tuple[int, ...], ...] | None:
    """'1x3x224x224' → one shape; '1x3x48x320,1x40' → one shape per model input."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if not all(re.fullmatch(r"\d+(x\d+)*", p) for p in parts):
        raise InputShapeError(f"--input-shape must look like 1x3x224x224 (comma-separated for several inputs), "
                              f"got {text!r}.")
    shapes = tuple(tuple(int(v) for v in p.split("x")) for p in parts)
    if any(v <= 0 for shape in shapes for v in shape):
        raise InputShapeError(f"--input-shape dimensions must be positive, got {text!r}.")
    return shapes[0] if len(shapes) == 1 else shapes


def parse_dynamic(text: str | None) -> tuple[int, int, int] | None:
    """'3:32..1280' → (axis 3, min 32, max 1280): a variable axis of the first input besides the batch."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*\.\.\s*(\d+)\s*", text)
    if not match:
        raise InputShapeError(f"--dynamic must look like AXIS:MIN..MAX (e.g. 3:32..1280), got {text!r}.")
    axis, lo, hi = (int(v) for v in match.groups())
    if axis == 0:
        raise InputShapeError("--dynamic names axis 0, the batch axis, which is always dynamic; "
                              "name the width/time axis (e.g. 3 for NCHW width).")
    if not 2 <= lo <= hi:  # torch.export treats sizes 0 and 1 as special and specialises them
        raise InputShapeError(f"--dynamic range {lo}..{hi} must satisfy 2 <= MIN <= MAX.")
    return axis, lo, hi


def _with_dynamic(spec: InputSpec, dynamic, model_spec: str) -> InputSpec:
    if dynamic is None:
        return spec
    axis, lo, hi = dynamic
    if axis >= len(spec.shape):
        raise InputShapeError(f"--dynamic axis {axis} does not exist: {model_spec} takes inputs shaped "
                              f"{_fmt(spec.shape)} ({len(spec.shape)} axes).")
    if not lo <= spec.shape[axis] <= hi:
        raise InputShapeError(f"the dynamic range {lo}..{hi} of axis {axis} excludes the example shape "
                              f"{_fmt(spec.shape)} (size {spec.shape[axis]}).")
    return dataclasses.replace(spec, dynamic=(axis, lo, hi))


def load_model(spec: str, weights: str | None = None, num_classes: int | None = None,
               in_chans: int | None = None, input_shape=None, trust_pickle: bool = False,
               dynamic: tuple[int, int, int] | None = None) -> LoadedModel:
    """Resolve a model spec; raises ModelSpecError / CheckpointError / InputShapeError.

    ``input_shape``: one shape, or a tuple of shapes for a model with several inputs (factories and .pt2
    programs only); ``dynamic``: (axis, min, max) of a variable axis of the first input.
    """
    extra = ()
    if input_shape is not None and isinstance(input_shape[0], (tuple, list)):
        if len(input_shape) > 1 and (spec.startswith("zoo:") or spec.startswith("timm:")):
            raise InputShapeError(f"{spec} takes one input; --input-shape gives {len(input_shape)}.")
        input_shape, extra = tuple(input_shape[0]), tuple(tuple(s) for s in input_shape[1:])
    loaded = _load(spec, weights, num_classes, in_chans, input_shape, trust_pickle, extra)
    model_dynamic = getattr(loaded.module, "edgeq_dynamic_axis", None) if loaded.module is not None else None
    loaded.input_spec = _with_dynamic(loaded.input_spec, dynamic or model_dynamic or loaded.input_spec.dynamic,
                                      spec)
    if weights and not spec.startswith("timm:"):
        if loaded.module is None:
            raise ModelSpecError("--weights cannot be applied to a .pt2 program; its weights are inside it.")
        load_state_dict_file(loaded.module, Path(weights), spec, trust_pickle)
        loaded.details["weights"] = str(weights)
    return loaded


def _load(spec: str, weights, num_classes, in_chans, input_shape, trust_pickle, extra) -> LoadedModel:
    if spec.startswith("zoo:"):
        loaded = _load_zoo(spec[4:], input_shape)
    elif spec.startswith("timm:"):
        loaded = _load_timm(spec[5:], weights, num_classes, in_chans, input_shape, trust_pickle)
    elif spec.endswith(".pt2"):
        loaded = _load_pt2(Path(spec), input_shape, extra)
    elif ":" in spec:
        loaded = _load_factory(spec, input_shape, extra)
    else:
        raise ModelSpecError(f"unknown model spec {spec!r}: use zoo:NAME, timm:NAME, "
                             f"path/to/file.py:factory, package.module:factory or a .pt2 file.")
    return loaded


def _load_zoo(name: str, input_shape) -> LoadedModel:
    if name in SPEECH_ZOO:
        return _load_speech_zoo(name, input_shape)
    if name not in ZOO:
        raise ModelSpecError(f"unknown zoo model {name!r}: the zoo has {', '.join([*ZOO, *SPEECH_ZOO])}.")
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


def _load_speech_zoo(name: str, input_shape) -> LoadedModel:
    from ..audio import DEFAULT
    entry = SPEECH_ZOO[name]
    if not entry.checkpoint.exists():
        raise ModelSpecError(f"zoo model {name!r} has no trained checkpoint; run scripts/train_speech.py.")
    module = entry.build()
    load_state_dict_file(module, entry.checkpoint, f"zoo:{name}", trust_pickle=False)
    native = module.edgeq_input_shape
    shape = tuple(input_shape or native)
    if len(shape) != 3 or shape[2] != native[2]:
        raise InputShapeError(f"zoo:{name} takes log-mel features shaped BxTx{native[2]} (e.g. "
                              f"{_fmt(native)}), not {_fmt(shape)}.")
    return LoadedModel(f"zoo:{name}", module.eval(), InputSpec(shape, (0.0,), (1.0,), features=DEFAULT.to_dict()),
                       details={"source": "zoo", "arch": "conformer-ctc", "charset": str(entry.charset_path),
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
        # a fixed initialisation: every load of the same spec without --weights is the same model, so the
        # variants of one report (or bench) are quantized from, and compared against, identical weights
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module = timm.create_model(name, pretrained=False, **kwargs)
    except Exception as exc:  # noqa: BLE001 - timm raises many types for bad kwargs
        raise ModelSpecError(f"timm could not build {name!r} with {kwargs}: {exc}.") from None
    if weights:
        load_state_dict_file(module, Path(weights), f"timm:{name}", trust_pickle)
        init = str(weights)
    else:
        revived = _revive_zero_init_norms(module)
        init = "random-init (seed 0)" + (f"; {revived} zero-initialised norm weights set to 1" if revived else "")
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
                                "weights": init})


def _revive_zero_init_norms(module: torch.nn.Module) -> int:
    """Set the norm weights timm initialises to zero (the last BatchNorm of a residual branch in MobileViT,
    LeViT, TinyViT…) to 1; returns how many. A random-init model stands in for a trained one, and no trained
    model has a dead branch: with a zero weight the branch's output is constant, its calibrated quantizer has
    a zero range, and OpenVINO folds the whole branch away in the int8 graph but not in FP32 (9 of
    mobilevit_xxs's 35 convs), so int8 speed-ups measured on such a model are inflated."""
    norms = (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm)
    revived = 0
    with torch.no_grad():
        for m in module.modules():
            weight = getattr(m, "weight", None)
            if isinstance(m, norms) and isinstance(weight, torch.Tensor) and weight.numel() > 1 \
                    and not weight.any():
                weight.fill_(1.0)
                revived += 1
    return revived


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


def _load_pt2(path: Path, input_shape, extra) -> LoadedModel:
    if not path.is_file():
        raise ModelSpecError(f"program {path} does not exist.")
    try:
        exported = load_program(path)
    except Exception:  # noqa: BLE001 - torch raises many types for bad archives
        raise ModelSpecError(f"{path} is not a saved torch.export program (torch.export.save).") from None
    names = _user_input_names(exported)
    tensors = [(n.name, n.meta.get("val")) for n in exported.graph.nodes if n.op == "placeholder" and n.name in names]
    if not tensors or not all(isinstance(t, torch.Tensor) for _, t in tensors):
        raise ModelSpecError(f"{path} must take tensor inputs only.")
    # symbolic axes (batch, a dynamic width) are described at their example size: 1 for the batch
    specs = []
    for name, t in tensors:
        shape = tuple((1 if i == 0 else _hint(d)) if isinstance(d, torch.SymInt) else int(d)
                      for i, d in enumerate(t.shape))
        dtype = "float32" if t.dtype.is_floating_point else "int64"
        specs.append(InputSpec(shape, name=name, dtype=dtype))
    requested = [tuple(input_shape), *extra] if input_shape is not None else None
    if requested is not None and [r[1:] for r in requested] != [s.shape[1:] for s in specs]:
        raise InputShapeError(f"{path} was exported for inputs shaped "
                              f"{', '.join(_fmt(s.shape) for s in specs)}, not {', '.join(map(_fmt, requested))}.")
    return LoadedModel(str(path), None, specs[0], exported=exported,
                       details={"source": "pt2", "path": str(path)}, extra_inputs=tuple(specs[1:]))


def _hint(dim) -> int:
    try:
        return int(dim.node.hint)
    except (AttributeError, TypeError):
        return 1


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


def _load_factory(spec: str, input_shape, extra) -> LoadedModel:
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
    if input_shape is None:  # the model's own declaration: one shape, or a list of shapes
        declared = getattr(model, "edgeq_input_shape", None)
        if declared is not None and isinstance(declared[0], (tuple, list)):
            input_shape, extra = tuple(declared[0]), tuple(tuple(s) for s in declared[1:])
        else:
            input_shape = declared
    if input_shape is None:
        raise InputShapeError(f"{spec} needs --input-shape (e.g. 1x3x224x224).")
    shapes = [tuple(input_shape), *extra]
    names = _forward_names(model, len(shapes))
    specs = [InputSpec(s, name=n) for s, n in zip(shapes, names)]
    return LoadedModel(spec, model.eval(), specs[0], details={"source": "factory", "factory": spec},
                       extra_inputs=tuple(specs[1:]))


def _forward_names(model: torch.nn.Module, count: int) -> list[str]:
    """Input names from forward's signature (what a user's .npz keys are matched against); 'input' for one."""
    import inspect
    if count == 1:
        return ["input"]
    try:
        params = [p.name for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return params[:count] if len(params) >= count else [f"input_{i}" for i in range(count)]


def _import_target(target: str, spec: str):
    if target.endswith(".py"):
        from ..usercode import import_file
        return import_file(Path(target), "edgeq_user", ModelSpecError, "model file")
    try:
        return importlib.import_module(target)
    except ImportError as exc:
        raise ModelSpecError(f"cannot import {target!r} for {spec!r}: {exc}.") from None
