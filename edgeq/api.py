"""The library surface the CLI calls: quantize(), export(), inspect(), evaluate(), profile()."""
from __future__ import annotations

from pathlib import Path

from .errors import ArtifactError, CalibrationError
from .fsutil import check_output

EXPORT_TARGETS = ("onnx", "tensorrt", "coreml")
CHECK_TARGETS = ("tensorrt",)


def quantize(model: str, calib: str = "zoo", recipe: str = "w8a8", out: str | Path = "model.edgeq",
             *, weights: str | None = None, num_classes: int | None = None, in_chans: int | None = None,
             input_shape: str | tuple | None = None, trust_pickle: bool = False, seed: int = 0,
             calib_size: int | None = None, batch_size: int | None = None, iters: int | None = None,
             weight_lr: float | None = None, act_lr: float | None = None, drop_prob: float | None = None,
             device: str = "cpu", resume: bool = False, force: bool = False,
             max_drop: float | None = None, min_cosine: float | None = None, eval_data: str | None = None,
             eval_size: int = 2000, target: str = "ort-cpu", latency_search: bool | None = None,
             placement_from: str | None = None) -> dict:
    """Quantize ``model`` with ``recipe`` on ``calib`` data and write a bundle to ``out``.

    Recipes with block reconstruction take ``iters``, ``batch_size``, ``weight_lr``, ``act_lr`` and
    ``drop_prob`` overrides, run on ``device`` and save their state after every block, so that a killed
    run continues with ``resume=True`` and ends with the same result.

    Fallback: ``max_drop`` (pp of top-1 on labelled ``eval_data``) or ``min_cosine`` (output cosine vs
    float on ``eval_data`` or the calibration data) reverts the most sensitive units to float until the
    budget holds; ``latency_search`` (default: the recipe's, on for w8a8) keeps in float whatever is not
    faster in int8 on ``target``. A budget that cannot be met raises BudgetError after writing the best
    model found to ``best_effort_path(out)``. ``placement_from`` (a bundle or placement JSON) applies a
    placement searched earlier, e.g. on the same architecture at its deployment resolution.
    """
    from .data import load_data
    from .fallback.run import FallbackRun, best_effort_path, read_placement
    from .models.intake import load_model, parse_input_shape
    from .profile.targets import get_target
    from .quant.pipeline import quantize_model
    from .trace.capture import check_input_shape

    out = check_output(out, force, is_dir=True)
    rec = _recipe_with_overrides(recipe, calib_size, batch_size, iters, weight_lr, act_lr, drop_prob)
    device = check_device(device)
    budget = _check_budget(max_drop, min_cosine, eval_data, eval_size)
    get_target(target)
    placement = read_placement(placement_from) if placement_from else None
    if budget is not None:
        check_output(best_effort_path(out), force, is_dir=True)
    state_dir = _check_resume(out, rec, resume, force)
    shape = parse_input_shape(input_shape) if isinstance(input_shape, str) else input_shape
    loaded = load_model(model, weights, num_classes, in_chans, shape, trust_pickle)
    check_input_shape(loaded)
    data = load_data(calib, loaded.input_spec, limit=rec.calibration.samples)
    state = None
    if rec.reconstruction is not None:
        if len(data) < rec.reconstruction.batch_size:
            raise CalibrationError(f"the calibration set has {len(data)} samples, fewer than one reconstruction "
                                   f"batch ({rec.reconstruction.batch_size}); give more data or a smaller "
                                   f"--batch-size.")
        state = _resume_state(state_dir, loaded, rec, data, seed, resume)
    fallback = FallbackRun(budget, _eval_set(eval_data, eval_size, budget, loaded), target, latency_search,
                           placement)
    result = quantize_model(loaded, data, rec, out, seed, device, state, fallback)
    if state is not None:
        state.remove()
    return result


def _check_budget(max_drop, min_cosine, eval_data, eval_size):
    from .errors import CalibrationError
    from .fallback.budget import Budget

    if eval_size <= 0:
        raise CalibrationError("--eval-size must be positive.")
    if max_drop is not None and min_cosine is not None:
        raise CalibrationError("give either --max-drop or --min-cosine, not both.")
    if max_drop is not None:
        if not max_drop >= 0:
            raise CalibrationError(f"--max-drop is a top-1 drop in percentage points and cannot be negative "
                                   f"(got {max_drop}).")
        if eval_data is None:
            raise CalibrationError("--max-drop needs labelled evaluation data: add --eval DATA "
                                   "(e.g. --eval zoo:test, an image folder with class subfolders, or x/y .npz).")
        return Budget(max_drop=float(max_drop))
    if min_cosine is not None:
        if not -1.0 <= min_cosine <= 1.0:
            raise CalibrationError(f"--min-cosine must be between -1 and 1 (got {min_cosine}).")
        return Budget(min_cosine=float(min_cosine))
    if eval_data is not None:
        raise CalibrationError("--eval is used by an accuracy budget: add --max-drop PP or --min-cosine C.")
    return None


def _eval_set(eval_data, eval_size, budget, loaded):
    from .data import load_data
    from .errors import CalibrationError

    if eval_data is None:
        return None
    data = load_data(eval_data, loaded.input_spec, limit=eval_size, default_split="test", what="evaluation")
    if budget.max_drop is not None and data.labels is None:
        raise CalibrationError(f"--max-drop needs labels, and the evaluation data {eval_data} has none; "
                               f"use --min-cosine for unlabelled data.")
    return data


def _recipe_with_overrides(recipe: str, calib_size, batch_size, iters, weight_lr, act_lr, drop_prob):
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
    if knobs and rec.reconstruction is None:
        raise RecipeError(f"recipe {rec.name} does not use block reconstruction, so --iters, --weight-lr, "
                          f"--act-lr and --drop-prob do not apply; use w8a8, w6a6 or w4a8.")
    if rec.reconstruction is not None:
        if batch_size is not None:
            knobs["batch_size"] = batch_size
        recon = dataclasses.replace(rec.reconstruction, **knobs).validate("command line")
        rec = dataclasses.replace(rec, reconstruction=recon)
    return rec


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

    import hashlib

    key = run_key({"model": loaded.describe(), "recipe": rec.to_dict(), "seed": seed, "data": data.summary(),
                   "data_sha256": hashlib.sha256(data.x.tobytes()).hexdigest(),
                   "input": loaded.input_spec.to_dict()})
    state = ResumeState(state_dir, key)
    if resume:
        if state.load():
            ui.log(f"resuming: {state.regions_done} blocks already learned ({state_dir})")
        else:
            ui.log(f"--resume: no saved state in {state_dir}; starting from the first block")
    return state


def export(bundle: str | Path, to: str = "onnx", out: str | Path = "model.onnx", *,
           precision: str | None = None, opset: int = 18, force: bool = False, compute_units: str = "ALL",
           dynamic_batch: bool = False, simplify: bool = False) -> dict:
    """``onnx``: QDQ int8 / fp16 / fp32 file; ``tensorrt``: a folder with the explicit-quantization ONNX
    (and an engine where TensorRT is installed); ``coreml``: an ``.mlpackage`` (w8a8 / w8 / fp16)."""
    if to not in EXPORT_TARGETS:
        raise ArtifactError(f"unknown export target {to!r}: use {', '.join(EXPORT_TARGETS)}.")
    if to == "coreml":
        from .export.coreml import export_coreml
        flavour = "w8a8" if precision in (None, "int8") else precision
        return export_coreml(bundle, out, flavour, compute_units, force)
    if to == "tensorrt":
        if precision not in (None, "int8"):
            raise ArtifactError(f"--to tensorrt writes int8 (float layers run FP16 in the engine); "
                                f"--precision {precision} is not available there.")
        from .export.tensorrt import export_tensorrt
        return export_tensorrt(bundle, out, opset, force)
    from .export.onnx import export_onnx
    return export_onnx(bundle, out, precision or "int8", opset, force, dynamic_batch, simplify)


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
            recipe: str = "w8a8-fast", eval_data: str | None = None, eval_size: int = 2000) -> dict:
    """Block map, parameters, MACs and quantizable ops of a model; with ``sensitivity``, the per-unit and
    per-block output error of quantizing ``recipe`` (observers only by default, for speed)."""
    import numpy as np

    from .models.intake import load_model, parse_input_shape
    from .trace.blocks import build_block_map
    from .trace.capture import capture, check_input_shape, fold_batchnorm, has_dynamic_batch, to_graph_module
    from .trace.reparam import reparameterize

    loaded = load_model(model, weights, num_classes, in_chans, parse_input_shape(input_shape), trust_pickle)
    check_input_shape(loaded)
    probe = np.random.default_rng(0).standard_normal((2, *loaded.input_spec.shape[1:])).astype(np.float32)
    loaded, reparam = reparameterize(loaded, probe)
    exported = capture(loaded)
    gm = to_graph_module(exported)
    folded = fold_batchnorm(gm)
    block_map = build_block_map(gm)
    result = {"model": loaded.spec, "input": loaded.input_spec.to_dict(),
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
    from .quant.pipeline import build_quantized, run_graph

    rec = _recipe_with_overrides(recipe, calib_size, None, None, None, None, None)
    data = load_data(calib, loaded.input_spec, limit=rec.calibration.samples)
    q = build_quantized(loaded, data, rec, seed=0)
    units = build_units(q.records, q.block_map)
    switch = FloatSwitch(q.gm, q.records)
    judge = load_data(eval_data, loaded.input_spec, limit=eval_size, default_split="test",
                      what="evaluation") if eval_data else data
    with switch.floating(units):
        float_out = run_graph(q.gm, judge.x, q.batch_size)
    report = analyse(q.gm, switch, units, Probe(judge.x, float_out, judge.labels, q.batch_size))
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
             reference: str | None = None, threads: int | None = None) -> dict:
    from .evaluate import evaluate_artifact
    return evaluate_artifact(artifact, data, limit, reference, threads)


def profile(artifact: str | Path, *, threads: int = 2, runs: int = 100, warmup: int = 10,
            batch: int = 1, target: str = "ort-cpu", ops: bool = False) -> dict:
    """Latency of one artifact on ``target`` (warm-up, then p50/p90/p99 over ``runs``); with ``ops``, also
    the time per op type and the kernel the runtime picked, from the runtime's own profiler."""
    from .envinfo import machine, package_versions
    from .export.onnx import onnx_in, read_artifact
    from .profile.latency import measure_interleaved

    if runs <= 0 or warmup < 0 or threads <= 0 or batch <= 0:
        raise ArtifactError("--runs, --threads and --batch must be positive and --warmup not negative.")
    artifact = onnx_in(artifact)
    record = read_artifact(artifact)
    m = measure_interleaved({"model": artifact}, runs=runs, warmup=warmup, batch=batch, threads=threads,
                            target=target)["model"]
    result = {"artifact": str(artifact), "precision": record.get("precision"), **m.to_dict(),
              "env": {"machine": machine(), **package_versions(("onnxruntime", "openvino"))}}
    if ops:
        from .profile.ort_cpu import random_input
        from .profile.targets import get_target
        x = random_input(artifact, _onnx_shape(artifact), batch, 0)
        result["ops"] = get_target(target).ops(artifact, x, max(5, min(runs, 50)), threads)
    return result


def _onnx_shape(artifact) -> list:
    from .profile.ort_cpu import input_info, session
    return input_info(session(artifact))[1]
