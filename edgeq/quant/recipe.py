"""Recipes are data: frozen dataclasses that round-trip through YAML/JSON and carry a format version.

A recipe gives the default weight and activation quantization, ordered overrides keyed by a layer's
module path, a ``re:`` pattern, a ``type:`` (conv, dwconv, linear) or a block ``kind:`` (stem, conv,
bridge, attention, mlp, head), calibration settings and, optionally, block reconstruction settings.
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
BLOCK_KINDS = ("stem", "conv", "bridge", "attention", "mlp", "head")
OBJECTIVES = ("mse", "fisher")


@dataclass(frozen=True)
class LayerSpec:
    """How one tensor (a weight or an activation) is quantized."""

    bits: int = 8
    granularity: str = "per_tensor"
    symmetric: bool = False
    observer: str = "minmax"
    percentile: float = 99.99
    # weights only: one bit less range (e.g. [-64, 63] for 8 bits), stored as int8. ``auto`` turns it on
    # where int8 dot products saturate (x86 without VNNI) and is resolved before quantization starts.
    reduce_range: bool | str = False

    @property
    def effective_bits(self) -> int:
        if self.reduce_range == "auto":
            raise ValueError("reduce_range 'auto' must be resolved before use")
        return self.bits - 1 if self.reduce_range else self.bits

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
        if self.reduce_range not in (True, False, "auto"):
            raise RecipeError(f"{where}: reduce_range must be true, false or auto, got {self.reduce_range!r}.")
        if self.reduce_range is True and self.bits < 3:
            raise RecipeError(f"{where}: reduce_range needs at least 3 bits.")
        return self


@dataclass(frozen=True)
class Override:
    """Layer-specific settings; ``None`` for a tensor keeps the recipe default, ``keep_float`` skips the layer."""

    match: str
    weights: LayerSpec | None = None
    activations: LayerSpec | None = None
    keep_float: bool = False

    def matches(self, layer_name: str, module_path: str, layer_type: str, kind: str = "") -> bool:
        if self.match.startswith("kind:"):
            return kind == self.match[5:]
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
class ReconSpec:
    """Block reconstruction (BRECQ objective, AdaRound weights, LSQ activation steps, QDrop)."""

    iterations: int = 300           # optimizer steps per block
    batch_size: int = 32
    weight_lr: float = 3e-3         # AdaRound rounding variables (Adam)
    act_lr: float = 1e-4            # LSQ activation step sizes (Adam)
    drop_prob: float = 0.5          # QDrop: probability of keeping an activation in float while learning
    round_weight: float = 0.01      # AdaRound regulariser weight (lambda)
    beta_start: float = 20.0        # regulariser temperature, annealed to beta_end after warm-up
    beta_end: float = 2.0
    warmup: float = 0.2             # fraction of iterations without the regulariser
    objective: str = "mse"          # mse | fisher (output error weighted by squared task-loss gradients)
    choose_granularity: bool = True  # per-tensor vs per-channel activations for depthwise/grouped convs
    choose_scheme: bool = True      # symmetric vs asymmetric activations, by block output error
    joint_bridges: bool = True      # a bridge block is learned together with the block before it
    # reconstruction where it pays (the built-in recipes set these; all 0 = every region, every iteration):
    time_budget: float = 0.0        # seconds of learning per model, most harmful regions first (0: no limit)
    learn_above: float = 0.0        # learn a region only when its observer-only output NMSE exceeds this
    patience: int = 0               # check the hard loss every this many steps and keep the best state;
                                    # with stop_early, stop after two checks when it is not 1 % below its
                                    # start (0: no checks)
    stop_early: bool = True

    def validate(self, where: str) -> "ReconSpec":
        for key in ("iterations", "batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise RecipeError(f"{where}: {key} must be a positive integer, got {value!r}.")
        if not isinstance(self.patience, int) or isinstance(self.patience, bool) or self.patience < 0:
            raise RecipeError(f"{where}: patience must be a non-negative integer, got {self.patience!r}.")
        for key in ("weight_lr", "act_lr", "round_weight", "beta_start", "beta_end", "time_budget", "learn_above"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise RecipeError(f"{where}: {key} must be a non-negative number, got {value!r}.")
        if not isinstance(self.drop_prob, (int, float)) or not 0.0 <= self.drop_prob <= 1.0:
            raise RecipeError(f"{where}: drop_prob must be between 0 and 1, got {self.drop_prob!r}.")
        if not isinstance(self.warmup, (int, float)) or not 0.0 <= self.warmup < 1.0:
            raise RecipeError(f"{where}: warmup must be in [0, 1), got {self.warmup!r}.")
        if self.objective not in OBJECTIVES:
            raise RecipeError(f"{where}: objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}.")
        for key in ("choose_granularity", "choose_scheme", "joint_bridges", "stop_early"):
            if not isinstance(getattr(self, key), bool):
                raise RecipeError(f"{where}: {key} must be true or false.")
        return self


@dataclass(frozen=True)
class FallbackSpec:
    """What may go back to float after quantization (accuracy budgets are given per run, not here)."""

    latency_search: bool = False     # time int8 vs float placements on the target; keep what is faster
    outliers: bool = True            # activations with outlier channel blocks stay in float
    outlier_ratio: float = 64.0      # largest channel-block max |x| / median channel max: above it, an outlier

    def validate(self, where: str) -> "FallbackSpec":
        for key in ("latency_search", "outliers"):
            if not isinstance(getattr(self, key), bool):
                raise RecipeError(f"{where}: {key} must be true or false.")
        if not isinstance(self.outlier_ratio, (int, float)) or not self.outlier_ratio > 1:
            raise RecipeError(f"{where}: outlier_ratio must be a number above 1, got {self.outlier_ratio!r}.")
        return self


@dataclass(frozen=True)
class Recipe:
    name: str
    weights: LayerSpec
    activations: LayerSpec
    overrides: tuple[Override, ...] = ()
    calibration: CalibSpec = field(default_factory=CalibSpec)
    reconstruction: ReconSpec | None = None
    fallback: FallbackSpec = field(default_factory=FallbackSpec)
    description: str = ""
    format: int = RECIPE_FORMAT

    def resolve(self, layer_name: str, module_path: str, layer_type: str, kind: str = ""
                ) -> tuple[LayerSpec, LayerSpec] | None:
        """(weight spec, activation spec) for one layer, or None when it stays in float."""
        for rule in self.overrides:
            if rule.matches(layer_name, module_path, layer_type, kind):
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


_W8 = LayerSpec(bits=8, granularity="per_channel", symmetric=True, observer="mse", reduce_range="auto")
_A8 = LayerSpec(bits=8, granularity="per_tensor", symmetric=False, observer="mse")
# Symmetric activations (int8, or uint8 from zero for non-negative tensors): zero-point 0 is what OpenVINO's
# int8 kernels run fastest (no zero-point compensation), with the zoo's accuracy unchanged; ONNX Runtime runs
# both alike. Measured in reports/experiments/symmetric-activations (fastvit_t8 1.25x → 2.0x OpenVINO FP32).
_A8_SYMMETRIC = LayerSpec(bits=8, granularity="per_tensor", symmetric=True, observer="mse")
# First and last layers keep 8 bits in the sub-8-bit recipes (standard practice in BRECQ/QDrop/Q-HyViT)
_EDGES_8BIT = (Override("kind:stem", weights=_W8, activations=_A8), Override("kind:head", weights=_W8, activations=_A8))
# At 8 bits most regions gain nothing from learning: learn those whose observer-only output error exceeds
# NMSE 1e-3 (SQNR < 30 dB), most harmful first, within 15 s of learning (issue 12: about a minute at 224²).
_WHERE_IT_PAYS = ReconSpec(time_budget=15.0, learn_above=1e-3, patience=50)
# Below 8 bits every region pays, and the hard loss keeps improving to the last iterations: learn them all.
# Keeping each region's best probed state helped w6a6 on the zoo (mobilevit 0.12 vs 0.23 pp, edgenext 0.04 vs
# 0.15) but not w4a8 (mobilevit over seeds 0-2: 0.25-0.33 vs 0.11-0.30 pp); differences of this size are
# within seed-to-seed spread (about ±0.1 pp), so treat the choice as provisional. No early stop there: the
# hard loss of an AdaRound region can sit flat for the first hundred steps (the regulariser starts after the
# warm-up) and then fall; stopped at 100 steps, w6a6 mobilevit_xxs's stem and stages.1.0 learned nothing
# (stages.1.0 block loss 7.12, where 300 steps reach 6.74).
_EVERY_REGION = ReconSpec()
_EVERY_REGION_KEEP_BEST = ReconSpec(patience=50, stop_early=False)

BUILTIN = {
    "w8a8": Recipe(
        name="w8a8",
        description="Block reconstruction (AdaRound weights, LSQ activation steps, QDrop, bridge blocks "
                    "learned jointly): per-channel symmetric int8 weights (7-bit range where int8 dot products "
                    "saturate, i.e. x86 without VNNI), symmetric activations (asymmetric where that clearly "
                    "lowers a block's error); units whose int8 form is not faster on the target (timed) "
                    "stay in float. The default.",
        weights=_W8, activations=_A8_SYMMETRIC, reconstruction=_WHERE_IT_PAYS,
        fallback=FallbackSpec(latency_search=True),
    ),
    "w6a6": Recipe(
        name="w6a6",
        description="Block reconstruction at 6-bit weights and activations; stem and head stay 8-bit.",
        weights=LayerSpec(bits=6, granularity="per_channel", symmetric=True, observer="mse"),
        activations=LayerSpec(bits=6, granularity="per_tensor", symmetric=False, observer="mse"),
        overrides=_EDGES_8BIT, reconstruction=_EVERY_REGION_KEEP_BEST,
    ),
    "w4a8": Recipe(
        name="w4a8",
        description="Block reconstruction at 4-bit weights, 8-bit activations; stem and head stay 8-bit.",
        weights=LayerSpec(bits=4, granularity="per_channel", symmetric=True, observer="mse"),
        activations=_A8, overrides=_EDGES_8BIT, reconstruction=_EVERY_REGION,
    ),
    "w8a8-fast": Recipe(
        name="w8a8-fast",
        description="Observers only: per-channel symmetric int8 weights (7-bit range where int8 dot products "
                    "saturate), per-tensor symmetric activations (int8, or uint8 from zero for non-negative "
                    "tensors); MSE-searched ranges.",
        # _W8's 7-bit weights on x86 without VNNI matter more since activations are symmetric: written as
        # uint8 around 128, nearly every u8×s8 pair sum can pass int16 there (tiny_hybrid's ORT export had
        # cosine 0.86 vs torch on an AVX2 EPYC with full-range weights)
        weights=_W8,
        activations=_A8_SYMMETRIC,
        fallback=FallbackSpec(outliers=False),
    ),
    "w8a8-minmax": Recipe(
        name="w8a8-minmax",
        description="Plain min/max observers, per-channel int8 weights, per-tensor uint8 activations: "
                    "the textbook baseline, kept for comparison.",
        weights=LayerSpec(bits=8, granularity="per_channel", symmetric=True, observer="minmax"),
        activations=LayerSpec(bits=8, granularity="per_tensor", symmetric=False, observer="minmax"),
        fallback=FallbackSpec(outliers=False),
    ),
}
DEFAULT_RECIPE = "w8a8"


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
    _reject_unknown(data, {"name", "description", "weights", "activations", "overrides", "calibration",
                           "reconstruction", "fallback"}, where)
    weights = _spec_section(data.get("weights"), base.weights, f"{where}: weights")
    activations = _spec_section(data.get("activations"), base.activations, f"{where}: activations")
    if "overrides" in data:
        overrides = tuple(_override(o, weights, activations, f"{where}: overrides[{i}]")
                          for i, o in enumerate(data["overrides"] or []))
    else:   # inherited like every other section (w6a6/w4a8 keep their 8-bit stem and head)
        overrides = base.overrides
    calib = _calib_spec(data.get("calibration"), base.calibration, f"{where}: calibration")
    recon = _recon_spec(data.get("reconstruction", _INHERIT), base.reconstruction, f"{where}: reconstruction")
    fallback = _spec_section(data.get("fallback"), base.fallback, f"{where}: fallback")
    return Recipe(name=str(data.get("name", "custom")), description=str(data.get("description", "")),
                  weights=weights, activations=activations, overrides=overrides, calibration=calib,
                  reconstruction=recon, fallback=fallback)


_INHERIT = object()  # no reconstruction key: take the base recipe's


def _recon_spec(data, default: ReconSpec | None, where: str) -> ReconSpec | None:
    """``reconstruction: false`` turns it off; a mapping overrides the base recipe's (or the defaults)."""
    if data is _INHERIT:
        return default
    if data is False or data is None:
        return None
    if data is True:
        return default or ReconSpec()
    if not isinstance(data, dict):
        raise RecipeError(f"{where} must be a mapping, true or false.")
    _reject_unknown(data, {f.name for f in dataclasses.fields(ReconSpec)}, where)
    return dataclasses.replace(default or ReconSpec(), **data).validate(where)


def _reject_unknown(data: dict, allowed: set, where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise RecipeError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))}).")


def _spec_section(data, default, where: str):
    """A mapping overriding fields of ``default`` (a LayerSpec or FallbackSpec), validated; None keeps it."""
    if data is None:
        return default
    if not isinstance(data, dict):
        raise RecipeError(f"{where} must be a mapping.")
    _reject_unknown(data, {f.name for f in dataclasses.fields(default)}, where)
    return dataclasses.replace(default, **data).validate(where)



def _override(data, weights: LayerSpec, activations: LayerSpec, where: str) -> Override:
    if not isinstance(data, dict) or not isinstance(data.get("match"), str):
        raise RecipeError(f"{where} must be a mapping with a 'match' string.")
    _reject_unknown(data, {"match", "float", "weights", "activations"}, where)
    match = data["match"]
    if match.startswith("type:") and match[5:] not in LAYER_TYPES:
        raise RecipeError(f"{where}: unknown layer type {match[5:]!r} (use {', '.join(LAYER_TYPES)}).")
    if match.startswith("kind:") and match[5:] not in BLOCK_KINDS:
        raise RecipeError(f"{where}: unknown block kind {match[5:]!r} (use {', '.join(BLOCK_KINDS)}).")
    if match.startswith("re:"):
        try:
            re.compile(match[3:])
        except re.error as exc:
            raise RecipeError(f"{where}: bad regular expression {match[3:]!r}: {exc}.") from None
    return Override(
        match=match, keep_float=bool(data.get("float", False)),
        weights=_spec_section(data["weights"], weights, f"{where}.weights") if "weights" in data else None,
        activations=(_spec_section(data["activations"], activations, f"{where}.activations")
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


def resolve_reduce_range(recipe: Recipe, saturates: bool) -> Recipe:
    """Replace ``reduce_range: auto`` by a decision for this machine (recorded in the bundle's recipe)."""
    def fix(spec: LayerSpec | None) -> LayerSpec | None:
        if spec is None or spec.reduce_range != "auto":
            return spec
        return dataclasses.replace(spec, reduce_range=saturates and spec.bits == 8)

    overrides = tuple(dataclasses.replace(o, weights=fix(o.weights), activations=fix(o.activations))
                      for o in recipe.overrides)
    return dataclasses.replace(recipe, weights=fix(recipe.weights), activations=fix(recipe.activations),
                               overrides=overrides)
