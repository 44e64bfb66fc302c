"""The library surface the CLI calls: quantize(), export(), inspect(), evaluate(), profile()."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ArtifactError, CalibrationError, EdgeqError
from .fsutil import check_output
from .target import DEFAULT_TARGET, get_target

EXPORT_TARGETS = ("onnx", "tensorrt", "coreml")
CHECK_TARGETS = ("tensorrt",)


def quantize(model: str, calib: str = "zoo", recipe: str = "w8a8", out: str | Path = "model.edgeq",
             *, weights: str | None = None, num_classes: int | None = None, in_chans: int | None = None,
             input_shape: str | tuple | None = None, trust_pickle: bool = False, seed: int = 0,
             calib_size: int | None = None, batch_size: int | None = None, iters: int | None = None,
             weight_lr: float | None = None, act_lr: float | None = None, drop_prob: float | None = None,
             device: str = "cpu", resume: bool = False, force: bool = False,
             max_drop: float | None = None, min_cosine: float | None = None, eval_data: str | None = None,
             eval_size: int = 2000, target: str | tuple | list | None = None, latency_search: bool | None = None,
             placement_from: str | None = None, dynamic: str | tuple | None = None,
             metric: "MetricChoice | None" = None, labels: str | None = None,
             time_budget: float | None = None) -> dict:
    """Quantize ``model`` with ``recipe`` on ``calib`` data and write a bundle to ``out``.

    ``input_shape`` takes one shape per model input ('1x3x48x320,1x40'); ``dynamic`` ('3:32..1280')
    makes that axis of the first input variable (calibration samples may then differ in length).

    Recipes with block reconstruction take ``iters``, ``batch_size``, ``weight_lr``, ``act_lr`` and
    ``drop_prob`` overrides, run on ``device`` and save their state after every block, so that a killed
    run continues with ``resume=True`` and ends with the same result. ``time_budget`` (seconds of learning)
    learns only the regions whose observer-only error is worth it, most harmful first, and stops a region
    whose hard-rounded loss does not move.

    Fallback: ``max_drop`` (the drop of ``metric`` on ``eval_data``, in its units: top-1 pp by default for
    class labels, ``labels`` naming where they are when not in ``eval_data``) or ``min_cosine`` (output cosine vs
    float on ``eval_data`` or the calibration data) reverts the most sensitive units to float until the
    budget holds; ``latency_search`` (default: the recipe's, on for w8a8) keeps in float whatever is not
    faster in int8 on ``target`` (one target or several: the bundle holds a placement per target, the first
    the default; ``export(target=T)`` applies T's). A budget that cannot be met raises BudgetError after
    writing the best model found to ``best_effort_path(out)``. ``placement_from`` (a bundle or placement
    JSON) applies the placements searched earlier, e.g. on the same architecture at its deployment resolution,
    instead of searching (``target`` then picks among them).
    """
    from .fallback.run import FallbackRun, best_effort_path
    from .models.intake import load_model, parse_dynamic, parse_input_shape
    from .quant.pipeline import quantize_model

    out = check_output(out, force, is_dir=True)
    rec = _recipe_with_overrides(recipe, calib_size, batch_size, iters, weight_lr, act_lr, drop_prob, time_budget)
    device = check_device(device)
    budget = _check_budget(max_drop, min_cosine, eval_data, eval_size, metric, labels)
    targets, placements = _targets_and_placements(target, placement_from)  # bad ones: a sentence before any work
    if budget is not None:
        check_output(best_effort_path(out), force, is_dir=True)
    state_dir = _check_resume(out, rec, resume, force)
    shape = parse_input_shape(input_shape) if isinstance(input_shape, str) else input_shape
    loaded = load_model(model, weights, num_classes, in_chans, shape, trust_pickle,
                        parse_dynamic(dynamic) if isinstance(dynamic, str) else dynamic)
    loaded, data = _checked_with_data(loaded, calib, rec.calibration.samples)
    state = None
    if rec.reconstruction is not None:
        if len(data) < rec.reconstruction.batch_size:
            raise CalibrationError(f"the calibration set has {len(data)} samples, fewer than one reconstruction "
                                   f"batch ({rec.reconstruction.batch_size}); give more data or a smaller "
                                   f"--batch-size.")
        state = _resume_state(state_dir, loaded, rec, data, seed, resume)
    eval_set = _eval_set(eval_data, eval_size, loaded, labels)
    budget = _budget_metric(budget, eval_set)
    fallback = FallbackRun(budget, eval_set, targets, latency_search, placements, export_int8=_export_int8)
    result = quantize_model(loaded, data, rec, out, seed, device, state, fallback)
    if state is not None:
        state.remove()
    _remove_superseded_learned(out)
    return result


def _remove_superseded_learned(out: Path) -> None:
    """A failed run may have left its learned model next to ``out`` (``keep_learned``); the bundle just written to
    ``out`` supersedes it (after ``--resume``, the same learned blocks with their fallback decisions), so the
    leftover goes, as the resume state does."""
    import shutil

    from . import ui
    from .fallback.run import learned_path
    leftover = learned_path(out)
    if (leftover / "manifest.json").is_file():
        shutil.rmtree(leftover, ignore_errors=True)
        ui.log(f"removed {leftover}, the learned model of the failed run ({out} supersedes it)")


def _targets_and_placements(target, placement_from) -> tuple[tuple[str, ...], dict | None]:
    """The targets to place for (canonical names, in order, no repeats) and the placements read from
    ``placement_from`` (only those of the given targets, when targets are given)."""
    from .errors import BundleError
    from .fallback.run import read_placements
    given = [target] if isinstance(target, str) else list(target or [])
    names = tuple(dict.fromkeys(get_target(t).name for t in given))
    if not placement_from:
        return names or (DEFAULT_TARGET,), None
    placements = read_placements(placement_from)
    missing = [t for t in names if t not in placements]
    if missing:
        raise BundleError(f"{placement_from} holds placements for {', '.join(placements)}, not for {missing[0]}.")
    if names:
        placements = {t: placements[t] for t in names}
    return tuple(placements), placements


def _export_int8(q, decisions, data, path: Path, target: str) -> Path:
    """The model as decided so far, as the int8 QDQ ONNX (in ``target``'s graph form) the placement search
    starts from."""
    import tempfile

    from .quant.pipeline import write_quantized
    with tempfile.TemporaryDirectory(prefix="edgeq-candidate-", dir=path.parent) as tmp:
        write_quantized(q, Path(tmp) / "b.edgeq", 0, data, "cpu", decisions)
        export(Path(tmp) / "b.edgeq", "onnx", path, precision="int8", target=target)
    return path


@dataclass(frozen=True)
class MetricChoice:
    """``--metric NAME|file.py:fn|module:fn`` with the options of the CTC metrics."""

    name: str
    charset: str | None = None
    blank: int = 0

    def load(self):
        from .metrics import get_metric
        return get_metric(self.name, self.charset, self.blank)


def _checked_with_data(loaded, calib: str, limit: int):
    """The model checked on its input shape (a wrong shape is blamed on the shape, before any data is
    read), then the calibration data; integer inputs (token ids) are checked on the data itself."""
    from .data import load_data
    from .errors import InputShapeError
    from .trace.capture import check_input_shape

    try:
        check_input_shape(loaded)
        shape_error = None
    except InputShapeError as exc:
        shape_error = exc
    try:
        data = load_data(calib, loaded.input_specs, limit=limit)
    except CalibrationError:
        if shape_error is not None:
            raise shape_error from None
        raise
    dtypes = [str(a.dtype) for a in data.samples.inputs]
    if shape_error is not None:
        if all(d.startswith("float") for d in dtypes):
            raise shape_error
        loaded = loaded.with_input_dtypes(dtypes)
        check_input_shape(loaded, data.samples)
    return loaded.with_input_dtypes(dtypes), data


def _check_budget(max_drop, min_cosine, eval_data, eval_size, metric: MetricChoice | None, labels):
    from .fallback.budget import Budget

    if eval_size <= 0:
        raise CalibrationError("--eval-size must be positive.")
    if max_drop is not None and min_cosine is not None:
        raise CalibrationError("give either --max-drop or --min-cosine, not both.")
    loaded_metric = metric.load() if metric is not None else None   # a bad metric fails before any work
    if max_drop is not None:
        if not max_drop >= 0:
            raise CalibrationError(f"--max-drop is a drop in the metric's units and cannot be negative "
                                   f"(got {max_drop}).")
        needs_data = loaded_metric is None or loaded_metric.needs_labels and not loaded_metric.needs_reference
        if eval_data is None and needs_data:
            raise CalibrationError("--max-drop needs labelled evaluation data: add --eval DATA "
                                   "(e.g. --eval zoo:test, an image folder with class subfolders, or x/y .npz).")
        return Budget(max_drop=float(max_drop), metric=loaded_metric)
    if min_cosine is not None:
        if not -1.0 <= min_cosine <= 1.0:
            raise CalibrationError(f"--min-cosine must be between -1 and 1 (got {min_cosine}).")
        return Budget(min_cosine=float(min_cosine))
    if eval_data is not None:
        raise CalibrationError("--eval is used by an accuracy budget: add --max-drop PP or --min-cosine C.")
    if labels is not None:
        raise CalibrationError("--labels are read by an accuracy budget's metric: add --eval DATA and --max-drop.")
    return None


def _eval_set(eval_data, eval_size, loaded, labels):
    from .data import load_data

    if eval_data is None:
        return None
    return load_data(eval_data, loaded.input_specs, limit=eval_size, default_split="test", what="evaluation",
                     labels=labels)


def _budget_metric(budget, eval_set):
    """The budget with its metric settled: top-1 for class labels unless --metric says otherwise."""
    import dataclasses

    from .metrics import metric_for
    if budget is None or budget.max_drop is None:
        return budget
    metric = budget.metric
    labels = eval_set.labels if eval_set is not None else None
    if metric is None:
        metric = metric_for(eval_set)
        if metric is None:
            raise CalibrationError(f"--max-drop needs a metric: the evaluation data "
                                   f"{eval_set.source if eval_set else ''} has "
                                   + ("no labels" if labels is None else "labels that are not class ids")
                                   + "; pass --metric (e.g. ctc-cer with --charset, or file.py:fn), or use "
                                     "--min-cosine.")
    elif metric.needs_labels and not metric.needs_reference and labels is None:
        raise CalibrationError(f"--metric {metric.name} needs labels, and the evaluation data has none; "
                               f"add --labels FILE or use --min-cosine.")
    return dataclasses.replace(budget, metric=metric)


def _recipe_with_overrides(recipe: str, calib_size, batch_size, iters, weight_lr, act_lr, drop_prob,
                           time_budget=None):
    import dataclasses

    from .errors import RecipeError
    from .quant.recipe import CalibSpec, load_recipe

    rec = load_recipe(recipe)
    if (calib_size is not None and calib_size <= 0) or (batch_size is not None and batch_size <= 0):
        raise CalibrationError("--calib-size and --batch-size must be positive.")
    if calib_size is not None or batch_size is not None:
        rec = dataclasses.replace(rec, calibration=CalibSpec(
            calib_size or rec.calibration.samples, batch_size or rec.calibration.batch_size))
    knobs = {"iterations": iters, "weight_lr": weight_lr, "act_lr": act_lr, "drop_prob": drop_prob}
    knobs = {k: v for k, v in knobs.items() if v is not None}
    if time_budget is not None:
        knobs.update(_where_it_pays(time_budget))
    if knobs and rec.reconstruction is None:
        raise RecipeError(f"recipe {rec.name} does not use block reconstruction, so --iters, --weight-lr, "
                          f"--act-lr, --drop-prob and --time-budget do not apply; use w8a8, w6a6 or w4a8.")
    if rec.reconstruction is not None:
        if batch_size is not None:
            knobs["batch_size"] = batch_size
        recon = dataclasses.replace(rec.reconstruction, **knobs).validate("command line")
        rec = dataclasses.replace(rec, reconstruction=recon)
    return rec


def _where_it_pays(time_budget: float) -> dict:
    """--time-budget S: learn the most harmful regions within S seconds; 0: every region, every iteration
    (the thorough run, as before reconstruction-where-it-pays)."""
    if not time_budget >= 0:
        raise CalibrationError(f"--time-budget is in seconds and cannot be negative (got {time_budget}).")
    if time_budget == 0:
        return {"time_budget": 0.0, "learn_above": 0.0, "patience": 0}
    return {"time_budget": float(time_budget)}


def check_device(device: str) -> str:
    import torch

    from .errors import DeviceError

    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {device} was requested but this machine has no usable CUDA device; "
                              f"use --device cpu.")
        return device
    raise DeviceError(f"--device must be cpu or cuda[:N], got {device!r}.")


def _check_resume(out: Path, rec, resume: bool, force: bool) -> Path:
    import shutil

    from .errors import OutputError
    from .reconstruct.state import resume_dir

    state_dir = resume_dir(out)
    if rec.reconstruction is None:
        if resume:
            raise OutputError(f"--resume applies to recipes with block reconstruction; {rec.name} has none.")
        return state_dir
    if state_dir.exists() and not resume:
        if not force:
            raise OutputError(f"an interrupted run left its state in {state_dir}; pass --resume to continue it "
                              f"or --force to start over.")
        shutil.rmtree(state_dir)
    if not state_dir.exists():  # fail now, not after the first block has been learned
        try:
            state_dir.mkdir()
            state_dir.rmdir()
        except OSError as exc:
            raise OutputError(f"cannot write {state_dir}: {exc.strerror or exc}.") from None
    return state_dir


def _resume_state(state_dir: Path, loaded, rec, data, seed: int, resume: bool):
    from . import ui
    from .reconstruct.state import ResumeState, run_key

    key = run_key({"model": loaded.describe(), "recipe": rec.to_dict(), "seed": seed, "data": data.summary(),
                   "data_sha256": data.samples.sha256(),
                   "input": loaded.input_spec.to_dict()})
    state = ResumeState(state_dir, key)
    if resume:
        if state.load():
            ui.log(f"resuming: {state.regions_done} blocks already learned ({state_dir})")
        else:
            ui.log(f"--resume: no saved state in {state_dir}; starting from the first block")
    return state


def export(bundle: str | Path, to: str | None = "onnx", out: str | Path = "model.onnx", *,
           precision: str | None = None, opset: int = 18, force: bool = False, compute_units: str = "ALL",
           dynamic_batch: bool = False, simplify: bool = False, target: str | None = None) -> dict:
    """``onnx``: QDQ int8 / fp16 / fp32 file; ``tensorrt``: a folder with the explicit-quantization ONNX
    (and an engine where TensorRT is installed); ``coreml``: an ``.mlpackage`` (w8a8 / w8 / fp16).
    ``target`` (a device target) decides the form and applies the bundle's latency placement for it; a target
    the bundle holds no placement for gets the recipe's placement (every candidate int8) and a note. Without a
    target, ONNX gets the bundle's default target's placement, TensorRT and CoreML the recipe's."""
    if target is not None:
        found = get_target(target)
        if to not in (None, found.form):
            raise ArtifactError(f"--to {to} does not match target {found.name}, which runs {found.form} artifacts.")
        to, target = found.form, found.name
    to = to or "onnx"
    if to not in EXPORT_TARGETS:
        raise ArtifactError(f"unknown export target {to!r}: use {', '.join(EXPORT_TARGETS)}.")
    if to == "coreml":
        from .export.coreml import export_coreml
        flavour = "w8a8" if precision in (None, "int8") else precision
        return export_coreml(bundle, out, flavour, compute_units, force, target=target or "CoreML")
    if to == "tensorrt":
        if precision not in (None, "int8"):
            raise ArtifactError(f"--to tensorrt writes int8 (float layers run FP16 in the engine); "
                                f"--precision {precision} is not available there.")
        from .export.tensorrt import export_tensorrt
        return export_tensorrt(bundle, out, opset, force, target=target or "TensorRT")
    from .export.onnx import export_onnx
    return export_onnx(bundle, out, precision or "int8", opset, force, dynamic_batch, simplify, target=target)


def check(artifact: str | Path, target: str = "tensorrt") -> dict:
    """Static lint of an ONNX file for ``target``: every node it would reject or fail to fuse."""
    import onnx

    from .export.trt_rules import lint
    if target not in CHECK_TARGETS:
        raise ArtifactError(f"unknown check target {target!r}: use {', '.join(CHECK_TARGETS)}.")
    from .export.onnx import onnx_in
    path = onnx_in(artifact)
    if not path.is_file():
        raise ArtifactError(f"artifact {artifact} does not exist.")
    try:
        model = onnx.load(str(path))
    except Exception:  # noqa: BLE001 - protobuf raises DecodeError and friends
        raise ArtifactError(f"{path} is not an ONNX file.") from None
    findings = [f.to_dict() for f in lint(model)]
    return {"artifact": str(path), "target": target, "nodes": len(model.graph.node),
            "errors": sum(f["severity"] == "error" for f in findings),
            "warnings": sum(f["severity"] == "warning" for f in findings), "findings": findings}


def inspect(model: str, *, weights: str | None = None, num_classes: int | None = None,
            in_chans: int | None = None, input_shape: str | None = None, trust_pickle: bool = False,
            sensitivity: bool = False, calib: str = "zoo", calib_size: int | None = None,
            recipe: str = "w8a8-fast", eval_data: str | None = None, eval_size: int = 2000,
            dynamic: str | None = None) -> dict:
    """Block map, parameters, MACs and quantizable ops of a model; with ``sensitivity``, the per-unit and
    per-block output error of quantizing ``recipe`` (observers only by default, for speed).

    A ``calib`` other than the zoo also supplies the example inputs (token ids must be real ids)."""
    from .data import load_data
    from .models.intake import load_model, parse_dynamic, parse_input_shape
    from .trace.blocks import build_block_map
    from .trace.capture import capture, check_input_shape, example_inputs, fold_batchnorm, has_dynamic_batch, \
        to_graph_module
    from .trace.reparam import reparameterize

    loaded = load_model(model, weights, num_classes, in_chans, parse_input_shape(input_shape), trust_pickle,
                        parse_dynamic(dynamic))
    samples = None
    if calib != "zoo":
        samples = load_data(calib, loaded.input_specs, limit=8).samples
        loaded = loaded.with_input_dtypes([str(a.dtype) for a in samples.inputs])
    check_input_shape(loaded, samples)
    probe = samples if samples is not None else tuple(t.numpy() for t in example_inputs(loaded, 2))
    loaded, reparam = reparameterize(loaded, probe)
    exported = capture(loaded, samples)
    gm = to_graph_module(exported)
    folded = fold_batchnorm(gm)
    block_map = build_block_map(gm)
    result = {"model": loaded.spec, "input": loaded.input_spec.to_dict(),
              "inputs": [s.to_dict() for s in loaded.input_specs],
              "dynamic_batch": has_dynamic_batch(exported), "reparameterized": reparam,
              "batchnorm_folded": len(folded),
              "quantizable_ops": quantizable_summary(block_map.op_counts), **block_map.to_dict()}
    if sensitivity:
        result["sensitivity"] = _sensitivity(loaded, calib, calib_size, recipe, eval_data, eval_size)
    return result


def _sensitivity(loaded, calib, calib_size, recipe, eval_data, eval_size) -> dict:
    from .data import load_data
    from .fallback.sensitivity import Probe, analyse
    from .fallback.units import FloatSwitch, build_units
    from .quant.pipeline import build_quantized
    from .samples import run_graph

    rec = _recipe_with_overrides(recipe, calib_size, None, None, None, None, None)
    data = load_data(calib, loaded.input_specs, limit=rec.calibration.samples)
    q = build_quantized(loaded, data, rec, seed=0)
    units = build_units(q.records, q.block_map)
    switch = FloatSwitch(q.gm, q.records)
    judge = load_data(eval_data, loaded.input_specs, limit=eval_size, default_split="test",
                      what="evaluation") if eval_data else data
    samples = judge.samples.uniform()   # sensitivity stacks outputs: equal lengths only
    labels = judge.class_labels if not judge.samples.ragged else None
    with switch.floating(units):
        float_out = run_graph(q.gm, samples, q.batch_size)
    report = analyse(q.gm, switch, units, Probe(samples, float_out, labels, q.batch_size))
    return {"recipe": rec.name, "data": judge.source, **report}


QUANTIZABLE = {"conv2d.default": "int8 weights + input",
               "linear.default": "int8 weights + input"}
FLOAT_FOR_NOW = {"scaled_dot_product_attention.default", "matmul.default", "bmm.default",
                 "softmax.int", "_softmax.default", "layer_norm.default", "group_norm.default",
                 "batch_norm.default", "gelu.default", "silu.default", "silu_.default",
                 "hardswish.default", "hardswish_.default", "add.Tensor", "mul.Tensor"}


def quantizable_summary(op_counts: dict) -> dict:
    """Per op type: how many, and how w8a8-fast treats it."""
    summary = {}
    for op, count in op_counts.items():
        if op in QUANTIZABLE:
            summary[op] = {"count": count, "quantized": True, "how": QUANTIZABLE[op]}
        elif op in FLOAT_FOR_NOW:
            summary[op] = {"count": count, "quantized": False, "how": "float"}
    return summary


def evaluate(artifact: str | Path, data: str = "zoo:test", *, limit: int | None = None,
             reference: str | None = None, threads: int | None = None, metric: MetricChoice | None = None,
             labels: str | None = None, target: str | None = None) -> dict:
    """``metric`` (default: top-1 for class labels) on ``data`` (``labels`` when stored elsewhere), run by
    ``target``'s runtime (default: x86-cpu-ort), and fidelity to FP32 per output. A bundle is run as its torch
    fake-quant model with ``target``'s latency placement (default: its own default target's)."""
    from .evaluate import evaluate_artifact
    if target is not None:
        get_target(target)
    if metric is not None:
        metric.load()   # a bad metric is one sentence before any inference
    return evaluate_artifact(artifact, data, limit, reference, threads, metric, labels, target)


def profile(artifact: str | Path, *, threads: int | None = None, runs: int = 100, warmup: int = 10,
            batch: int | None = None, target: str = DEFAULT_TARGET, ops: bool = False) -> dict:
    """A versioned Measurement of one artifact on ``target`` (``profile/measure.py``): per batch size the
    target lists (or ``batch``), percentiles, throughput, load time, memory and the raw samples; the
    device fingerprint. With ``ops``, also the time per op type and the kernel the runtime picked."""
    from .profile.measure import measure

    if ops and get_target(target).reach == "ssh":
        raise EdgeqError(f"--ops profiles with this machine's runtime; on {get_target(target).name} (over SSH) the "
                         f"runner times whole inferences only.")
    result = measure(artifact, target, runs, warmup, [batch] if batch is not None else None, threads)
    if ops and result["measured"]:
        from .runtimes.base import onnx_file
        from .runtimes.feeds import example_shapes, random_input
        from .runtimes.ort import input_info, session
        path = onnx_file(artifact)
        first = result["batches"][0]["batch"]
        x = random_input(path, input_info(session(path))[1], first, 0, (example_shapes(path) or [None])[0])
        result["ops"] = get_target(target).plugin.ops(path, x, max(5, min(runs, 50)), result["threads"])
    return result
