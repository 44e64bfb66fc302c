"""Recipes are data: frozen dataclasses that round-trip through YAML/JSON and carry a format version.

A recipe gives the default weight and activation quantization, ordered overrides keyed by a layer's
module path, a ``re:`` pattern or a ``type:`` (conv, dwconv, linear), and calibration settings.
The first override that matches a layer wins; ``float: true`` keeps that layer in float.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import RecipeError

RECIPE_FORMAT = 1
OBSERVERS = ("minmax", "percentile", "mse")
GRANULARITIES = ("per_tensor", "per_channel")
LAYER_TYPES = ("conv", "dwconv", "linear")


@dataclass(frozen=True)
class LayerSpec:
    """How one tensor (a weight or an activation) is quantized."""

    bits: int = 8
    granularity: str = "per_tensor"
    symmetric: bool = False
    observer: str = "minmax"
    percentile: float = 99.99

    def validate(self, where: str) -> "LayerSpec":
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise RecipeError(f"{where}: bits must be an integer from 2 to 8, got {self.bits!r}.")
        if self.granularity not in GRANULARITIES:
            raise RecipeError(f"{where}: granularity must be one of {', '.join(GRANULARITIES)}, "
                              f"got {self.granularity!r}.")
        if self.observer not in OBSERVERS:
            raise RecipeError(f"{where}: observer must be one of {', '.join(OBSERVERS)}, "
                              f"got {self.observer!r}.")
        if not isinstance(self.symmetric, bool):
            raise RecipeError(f"{where}: symmetric must be true or false.")
        if not 50.0 < float(self.percentile) <= 100.0:
            raise RecipeError(f"{where}: percentile must be in (50, 100], got {self.percentile!r}.")
        return self


@dataclass(frozen=True)
class Override:
    """Layer-specific settings; ``None`` for a tensor keeps the recipe default, ``keep_float`` skips the layer."""

    match: str
    weights: LayerSpec | None = None
    activations: LayerSpec | None = None
    keep_float: bool = False

    def matches(self, layer_name: str, module_path: str, layer_type: str) -> bool:
        if self.match.startswith("type:"):
            return layer_type == self.match[5:] or (self.match[5:] == "conv" and layer_type == "dwconv")
        if self.match.startswith("re:"):
            pattern = self.match[3:]
            return bool(re.fullmatch(pattern, module_path) or re.fullmatch(pattern, layer_name))
        return self.match in (module_path, layer_name)


@dataclass(frozen=True)
class CalibSpec:
    samples: int = 256
    batch_size: int = 32


@dataclass(frozen=True)
class Recipe:
    name: str
    weights: LayerSpec
    activations: LayerSpec
    overrides: tuple[Override, ...] = ()
    calibration: CalibSpec = field(default_factory=CalibSpec)
    description: str = ""
    format: int = RECIPE_FORMAT

    def resolve(self, layer_name: str, module_path: str, layer_type: str
                ) -> tuple[LayerSpec, LayerSpec] | None:
        """(weight spec, activation spec) for one layer, or None when it stays in float."""
        for rule in self.overrides:
            if rule.matches(layer_name, module_path, layer_type):
                if rule.keep_float:
                    return None
                return rule.weights or self.weights, rule.activations or self.activations
        return self.weights, self.activations

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["overrides"] = [_override_to_dict(o) for o in self.overrides]
        return {"edgeq_recipe": data.pop("format"), **data}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _override_to_dict(rule: Override) -> dict:
    out: dict = {"match": rule.match}
    if rule.keep_float:
        out["float"] = True
    for key in ("weights", "activations"):
        spec = getattr(rule, key)
        if spec is not None:
            out[key] = dataclasses.asdict(spec)
    return out


BUILTIN = {
    "w8a8-fast": Recipe(
        name="w8a8-fast",
        description="Observers only: per-channel symmetric int8 weights (MSE-searched ranges), "
                    "per-tensor asymmetric uint8 activations (MSE-searched ranges).",
        weights=LayerSpec(bits=8, granularity="per_channel", symmetric=True, observer="mse"),
        activations=LayerSpec(bits=8, granularity="per_tensor", symmetric=False, observer="mse"),
    ),
    "w8a8-minmax": Recipe(
        name="w8a8-minmax",
        description="Plain min/max observers, per-channel int8 weights, per-tensor uint8 activations: "
                    "the textbook baseline, kept for comparison.",
        weights=LayerSpec(bits=8, granularity="per_channel", symmetric=True, observer="minmax"),
        activations=LayerSpec(bits=8, granularity="per_tensor", symmetric=False, observer="minmax"),
    ),
}
DEFAULT_RECIPE = "w8a8-fast"


def load_recipe(name_or_path: str) -> Recipe:
    """A built-in recipe by name, or a YAML/JSON recipe file."""
    if name_or_path in BUILTIN:
        return BUILTIN[name_or_path]
    path = Path(name_or_path)
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise RecipeError(f"unknown recipe {name_or_path!r}: use one of {', '.join(BUILTIN)} "
                          f"or a .yaml/.json recipe file.")
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist.")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RecipeError(f"recipe file {path} is not valid {path.suffix[1:].upper()}: "
                          f"{str(exc).splitlines()[0]}.") from None
    return recipe_from_dict(data, where=f"recipe file {path}")


def recipe_from_dict(data, where: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{where} must be a mapping with keys edgeq_recipe, name, weights, activations.")
    data = dict(data)
    version = data.pop("edgeq_recipe", None)
    if version != RECIPE_FORMAT:
        raise RecipeError(f"{where}: edgeq_recipe must be {RECIPE_FORMAT} (this edgeq's recipe format), "
                          f"got {version!r}.")
    base = BUILTIN.get(data.pop("base", DEFAULT_RECIPE))
    if base is None:
        raise RecipeError(f"{where}: base must name a built-in recipe ({', '.join(BUILTIN)}).")
    _reject_unknown(data, {"name", "description", "weights", "activations", "overrides", "calibration"}, where)
    weights = _layer_spec(data.get("weights"), base.weights, f"{where}: weights")
    activations = _layer_spec(data.get("activations"), base.activations, f"{where}: activations")
    overrides = tuple(_override(o, weights, activations, f"{where}: overrides[{i}]")
                      for i, o in enumerate(data.get("overrides") or []))
    calib = _calib_spec(data.get("calibration"), base.calibration, f"{where}: calibration")
    return Recipe(name=str(data.get("name", "custom")), description=str(data.get("description", "")),
                  weights=weights, activations=activations, overrides=overrides, calibration=calib)


def _reject_unknown(data: dict, allowed: set, where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise RecipeError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))}).")


def _layer_spec(data, default: LayerSpec, where: str) -> LayerSpec:
    if data is None:
        return default
    if not isinstance(data, dict):
        raise RecipeError(f"{where} must be a mapping.")
    _reject_unknown(data, {f.name for f in dataclasses.fields(LayerSpec)}, where)
    return dataclasses.replace(default, **data).validate(where)


def _override(data, weights: LayerSpec, activations: LayerSpec, where: str) -> Override:
    if not isinstance(data, dict) or not isinstance(data.get("match"), str):
        raise RecipeError(f"{where} must be a mapping with a 'match' string.")
    _reject_unknown(data, {"match", "float", "weights", "activations"}, where)
    match = data["match"]
    if match.startswith("type:") and match[5:] not in LAYER_TYPES:
        raise RecipeError(f"{where}: unknown layer type {match[5:]!r} (use {', '.join(LAYER_TYPES)}).")
    if match.startswith("re:"):
        try:
            re.compile(match[3:])
        except re.error as exc:
            raise RecipeError(f"{where}: bad regular expression {match[3:]!r}: {exc}.") from None
    return Override(
        match=match, keep_float=bool(data.get("float", False)),
        weights=_layer_spec(data["weights"], weights, f"{where}.weights") if "weights" in data else None,
        activations=(_layer_spec(data["activations"], activations, f"{where}.activations")
                     if "activations" in data else None))


def _calib_spec(data, default: CalibSpec, where: str) -> CalibSpec:
    if data is None:
        return default
    if not isinstance(data, dict):
        raise RecipeError(f"{where} must be a mapping.")
    _reject_unknown(data, {"samples", "batch_size"}, where)
    spec = dataclasses.replace(default, **data)
    if not (isinstance(spec.samples, int) and spec.samples > 0
            and isinstance(spec.batch_size, int) and spec.batch_size > 0):
        raise RecipeError(f"{where}: samples and batch_size must be positive integers.")
    return spec
