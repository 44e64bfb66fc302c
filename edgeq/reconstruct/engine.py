"""Block reconstruction: learn each region's rounding and activation steps against the float block.

First a triage pass (``triage.py``) measures every region's observer-only output error and the cost of a
learning step, and plans which regions to learn within the time budget. Then, for every region in
execution order (BRECQ):
  1. its inputs come from the already-quantized regions before it (cached), its targets from the
     float model (cached, float16; ``caches.py``: every sample only where a region is learned, otherwise
     the scheme-choice samples);
  2. per activation quantizer, the candidate schemes (symmetric/asymmetric, per-tensor/per-channel for
     depthwise inputs) are compared by the region's output error, and the best one is kept (a symmetric
     recipe's scheme unless asymmetric clearly wins; unless it is worse than the observer's on the
     evaluation subset);
  3. if the plan learns it, AdaRound variables and LSQ steps are trained (``train.py``) until the
     iterations, a check that finds its hard-rounded loss not moving, or its share of the budget;
  4. the hard decisions are frozen, and the state is saved for ``--resume``.
A region whose loss turns NaN/Inf falls back to observer-only quantization (round-to-nearest weights,
observer steps) and the report says why; one where learning does not lower the loss on the evaluation
subset keeps the observer solution too. CPU runs are deterministic for a given seed when no time budget
binds (``time_budget: 0``, or a budget larger than the learning takes).
"""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch
from torch import fx

from .. import ui
from ..memory import release_freed_memory
from ..quant.fakequant import ActQuant, LayerQuant, dequantize_int, quantize_int, round_biases, spec_label
from ..quant.observers import QParams
from ..samples import flatten_outputs
from ..quant.recipe import ReconSpec
from ..trace.blocks import BlockMap
from ..trace.graphutil import set_param
from .caches import Caches
from .learners import AdaRound, LearnedStep, Mode
from .regions import Region, on_device, plan_regions, run_region
from .state import ResumeState
from .train import NonFiniteLoss, block_loss, train_region
from .triage import Budget, rounded_nmse, triage

EVAL_SAMPLES = 128   # fixed subset for the before/after loss of a learned region
SCHEME_SAMPLES = 32  # its first samples compare activation schemes (one region forward per candidate) and
                     # measure the regions that are not learned


class _Skipped(Exception):
    """The triage kept this region's observer solution (its report says why)."""


@dataclasses.dataclass
class Learners:
    mode: Mode
    weights: dict[str, AdaRound]       # layer -> AdaRound
    acts: dict[str, LearnedStep]       # ActQuant module name -> LSQ step
    eval_batch: int | None = None      # evaluation batch (a fixed-batch program runs only at its size)


def reconstruct(gm: fx.GraphModule, records: dict[str, LayerQuant], block_map: BlockMap, x,
                spec: ReconSpec, seed: int, device: str, state: ResumeState | None = None,
                static_batch: int | None = None) -> dict:
    """Learn every region in place; afterwards ``records`` and the ActQuant modules hold the result.

    ``x``: the calibration inputs, one equal-length array per model input (or one array); ``static_batch``:
    the batch size a fixed-batch program takes (its evaluation subsets then run in batches of it)."""
    start = time.perf_counter()
    release_freed_memory()
    regions = plan_regions(gm, block_map, set(records), spec.joint_bridges)
    learners = _attach(gm, records, spec)
    frozen = [p for p in gm.parameters() if p.requires_grad]
    for p in frozen:   # only the learners learn: no gradients for the model's own weights, biases, norms
        p.requires_grad_(False)
    learners.eval_batch = static_batch or spec.batch_size   # batches bound the memory at 224² and above
    gm.to(device)
    for learner in [*learners.weights.values(), *learners.acts.values()]:
        learner.to(device)
    arrays = (x,) if isinstance(x, np.ndarray) else tuple(x)
    inputs = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    model_inputs = dict(zip(placeholders, inputs))
    grads = _output_gradients(gm, learners, regions, inputs, spec, device) if spec.objective == "fisher" else {}
    plan = triage(regions, {k: v[:EVAL_SAMPLES] for k, v in model_inputs.items()}, learners.mode, spec, device,
                  static_batch or spec.batch_size, fixed_batch=static_batch is not None)
    budget = Budget(plan, spec.iterations)
    release_freed_memory()
    ui.log(plan.summary())
    caches = Caches(model_inputs, _small_size(len(inputs[0]), static_batch), learners.mode, spec.batch_size, device)
    reports = []
    loop_start = time.perf_counter()
    for i, region in enumerate(regions):
        resumed = state is not None and i < state.regions_done
        learn = not resumed and budget.allows(i)
        if learn:
            caches.catch_up()
        floats, quants = (caches.full_float, caches.full_quant) if learn else (caches.small_float, caches.small_quant)
        targets = run_region(region, floats, learners.mode, "float", spec.batch_size, device)
        if resumed:
            report = state.data["regions"][i]
            _load_region(region, learners, gm, state, device)
        else:
            report = _learn_region(i, region, learners, records, gm, quants, targets,
                                   [grads.get(o) for o in region.outputs], spec, seed, device,
                                   None if learn else plan.reason_skipped(i), budget.allowance(i))
            report["nmse_observers"] = rounded_nmse(plan.nmse[i])
            if not learn:
                report["skipped"] = plan.skip_label(i)
            budget.spend(i, report.get("learn_seconds", 0.0), report.get("iterations", 0))
            if state is not None:
                state.record(report, {name: learners.weights[name].hard_int() for name in region.layers},
                             {name: _act_state(learners.acts[name]) for name in region.act_quantizers})
        reports.append(report)
        outputs = run_region(region, quants, learners.mode, "hard", spec.batch_size, device)
        (caches.advance_full if learn else caches.advance_small)(i, region, targets, outputs)
        release_freed_memory()
        eta = budget.eta(i, len(regions), time.perf_counter() - loop_start)
        ui.log(_summary_line(i, len(regions), report) + f" [ETA {eta:.0f} s]")
    _store(gm, records, learners)
    gm.to("cpu")
    for p in frozen:
        p.requires_grad_(True)
    return {"spec": dataclasses.asdict(spec), "device": device, "regions": reports, "triage": plan.to_dict(),
            "learned": [r["name"] for r in reports if r["status"] == "learned"],
            "fallbacks": [r["name"] for r in reports if r["status"] == "fallback"],
            "kept_observers": [r["name"] for r in reports if r["status"] == "observers"],
            "seconds": round(time.perf_counter() - start, 2)}


def _small_size(n: int, static_batch: int | None) -> int:
    """Samples the regions that are not learned run on: the scheme-choice samples, whole batches of a
    fixed-batch program."""
    batch = static_batch or 1
    return min(n, -(-SCHEME_SAMPLES // batch) * batch)


def _summary_line(i: int, total: int, report: dict) -> str:
    """One line per region for logs (the manifest keeps the full reason)."""
    head = f"  [{i + 1}/{total}] {report['name']}:"
    nmse = f"NMSE {report['nmse_observers']:.2g}, " if report.get("nmse_observers") is not None else ""
    if report["status"] == "learned":
        stopped = f", stopped: {report['stopped']}" if report.get("stopped") else ""
        return (f"{head} learned, loss {report['loss_observers']:.4g} -> {report['loss_learned']:.4g} "
                f"({nmse}{report['iterations']} steps{stopped}, {report['seconds']} s)")
    short = report.get("skipped") or report.get("reason", "").split(";")[0]
    return f"{head} {report['status']} ({nmse}{short}, {report['seconds']} s)"


def _attach(gm: fx.GraphModule, records: dict[str, LayerQuant], spec: ReconSpec) -> Learners:
    """Plug an AdaRound into every WeightQuant and an LSQ step into every ActQuant (not as submodules)."""
    mode = Mode(spec.drop_prob)
    weights = {}
    for name, rec in records.items():
        wq = gm.get_submodule(f"edgeq_weight_{name}")
        weights[name] = AdaRound(rec.float_weight, rec.weight_qparams, mode)
        object.__setattr__(wq, "learner", weights[name])
    acts = {}
    for name, module in gm.named_children():
        if isinstance(module, ActQuant):
            acts[name] = LearnedStep(module.qparams, mode, spec_label(module.spec))
            object.__setattr__(module, "learner", acts[name])
    return Learners(mode, weights, acts)


def _batches(n: int, batch_size: int):
    for i in range(0, n, batch_size):
        yield slice(i, min(n, i + batch_size))


def _eval_loss(region: Region, learners: Learners, inputs, targets, weights, device) -> float:
    learners.mode.value = "hard"
    n = len(inputs[0])
    parts = []
    with torch.no_grad():
        for s in _batches(n, learners.eval_batch or n):
            outs = region.module(*[on_device(t[s], device) for t in inputs])
            loss = block_loss(outs, [on_device(t[s], device) for t in targets],
                         [w[s].to(device) if w is not None else None for w in weights])
            parts.append((float(loss), s.stop - s.start))
    if len(parts) == 1:
        return parts[0][0]
    return sum(loss * count for loss, count in parts) / n


def _learn_region(i: int, region: Region, learners: Learners, records, gm, quant_cache, targets, grads,
                  spec: ReconSpec, seed: int, device: str, skip: str | None = None,
                  allowance: float | None = None) -> dict:
    """Scheme choice, then (unless ``skip`` gives the triage's reason) learning until the iterations, a
    no-progress check or ``allowance`` seconds; the learned solution is kept only if it lowers the block loss."""
    start = time.perf_counter()
    n = len(quant_cache[region.inputs[0]])
    # a region that will not be learned is only measured on the scheme-choice samples
    sub = slice(0, min(n, EVAL_SAMPLES if skip is None else SCHEME_SAMPLES))
    eval_in = [quant_cache[k][sub] for k in region.inputs]
    eval_tgt, eval_w = [t[sub] for t in targets], [g[sub] if g is not None else None for g in grads]
    report = {"name": region.name, "kinds": list(region.kinds), "layers": list(region.layers),
              "eval_samples": sub.stop}
    try:
        report["loss_observers"] = _eval_loss(region, learners, eval_in, eval_tgt, eval_w, device)
        observed = _current_steps(region, learners)
        few = slice(0, SCHEME_SAMPLES)
        report["choices"] = _choose_schemes(region, learners, gm, [t[few] for t in eval_in],
                                            [t[few] for t in eval_tgt],
                                            [w[few] if w is not None else None for w in eval_w], device)
        chosen = _eval_loss(region, learners, eval_in, eval_tgt, eval_w, device)
        if chosen > report["loss_observers"]:   # chosen on fewer samples, worse on the evaluation subset
            _restore_steps(learners, gm, observed, device)   # the weights stay free to learn
            chosen = report["loss_observers"]
            report["choices_reverted"] = True
        if skip is not None:
            report.update(status="observers", reason=skip, loss_chosen=chosen, iterations=0)
            raise _Skipped
        initial = _current_steps(region, learners)
        learn_start = time.perf_counter()
        deadline = None if allowance is None else learn_start + allowance
        steps, stopped = train_region(i, region, learners, quant_cache, targets, grads, spec, seed, device, deadline)
        report["learn_seconds"] = round(time.perf_counter() - learn_start, 2)
        after = _eval_loss(region, learners, eval_in, eval_tgt, eval_w, device)
        if not math.isfinite(after):
            raise NonFiniteLoss("the learned block's loss is not finite")
        report.update(status="learned", loss_chosen=chosen, loss_learned=after, iterations=steps,
                      **({"stopped": stopped} if stopped else {}))
        if after > chosen:  # learning made it worse on the evaluation subset: keep the observer solution
            _revert(region, learners, gm, records, initial, device)
            report.update(status="observers", reason="learning did not lower the block loss; kept the "
                                                     "observer ranges and round-to-nearest weights")
    except _Skipped:
        pass
    except NonFiniteLoss as exc:
        _fall_back(region, learners, gm, records, device)
        report.update(status="fallback", reason=f"{exc}; kept observer-only quantization (round-to-nearest "
                                                f"weights, observer ranges)", iterations=0)
        ui.log(f"  {region.name}: {report['reason']}")
    for name in region.layers:
        learners.weights[name].fix()
    report["seconds"] = round(time.perf_counter() - start, 2)
    for key in ("loss_observers", "loss_chosen", "loss_learned"):
        if key in report and not math.isfinite(report[key]):
            report[key] = None
    return report


def _current_steps(region: Region, learners: Learners) -> dict[str, tuple[QParams, str]]:
    return {name: (learners.acts[name].qparams(), learners.acts[name].label) for name in region.act_quantizers}


def _choose_schemes(region: Region, learners: Learners, gm, inputs, targets, weights, device) -> dict:
    """Per activation quantizer with alternatives, keep the scheme with the lowest region output error."""
    choices = {}
    for name in region.act_quantizers:
        module: ActQuant = gm.get_submodule(name)
        options = getattr(module, "candidate_qparams", {})
        if len(options) < 2:
            continue
        losses = {}
        for label, qp in options.items():
            learners.acts[name] = _swap_step(module, LearnedStep(qp, learners.mode, label).to(device))
            losses[label] = _eval_loss(region, learners, inputs, targets, weights, device)
        finite = {k: v for k, v in losses.items() if math.isfinite(v)}
        best = _preferring_symmetric(finite, module.spec.symmetric) if finite else spec_label(module.spec)
        learners.acts[name] = _swap_step(module, LearnedStep(options[best], learners.mode, best).to(device))
        choices[name] = {"chosen": best, "losses": {k: (v if math.isfinite(v) else None) for k, v in losses.items()}}
    return choices


# A recipe with symmetric activations keeps a quantizer symmetric unless asymmetric lowers the region's error
# by more than this factor. Asymmetric activations cost OpenVINO its fastest int8 kernels (zero-point
# compensation: fastvit_t8 ran 1.25x OpenVINO FP32 all asymmetric, 2.0x all symmetric), while the zoo's
# accuracy did not move with every activation symmetric (reports/experiments/symmetric-activations). The
# accuracy budget still judges the result.
ASYMMETRIC_MUST_DIVIDE_ERROR_BY = 1.5


def _preferring_symmetric(losses: dict[str, float], recipe_symmetric: bool) -> str:
    """The scheme label with the lowest loss, or its symmetric twin when the recipe is symmetric and the twin
    is within ``ASYMMETRIC_MUST_DIVIDE_ERROR_BY`` of it."""
    best = min(losses, key=losses.get)
    twin = best.replace("/asym", "/sym")
    if recipe_symmetric and twin in losses and losses[twin] <= ASYMMETRIC_MUST_DIVIDE_ERROR_BY * losses[best]:
        return twin
    return best


def _swap_step(module: ActQuant, step: LearnedStep) -> LearnedStep:
    object.__setattr__(module, "learner", step)
    return step


def _fall_back(region: Region, learners: Learners, gm, records, device: str) -> None:
    """Observer-only quantization for this region: round-to-nearest weights, the observer's steps."""
    observed = {}
    for name in region.act_quantizers:
        module = gm.get_submodule(name)
        observed[name] = (module.qparams, spec_label(module.spec))
    _revert(region, learners, gm, records, observed, device)


def _revert(region: Region, learners: Learners, gm, records, acts: dict[str, tuple[QParams, str]],
            device: str) -> None:
    """Round-to-nearest weights and the given (qparams, scheme label) activation steps for this region."""
    for name in region.layers:
        rounding = learners.weights[name]
        rounding.fix(quantize_int(rounding.float_weight, records[name].weight_qparams))
    _restore_steps(learners, gm, acts, device)


def _restore_steps(learners: Learners, gm, acts: dict[str, tuple[QParams, str]], device: str) -> None:
    for name, (qp, label) in acts.items():
        learners.acts[name] = _swap_step(gm.get_submodule(name), LearnedStep(qp, learners.mode, label).to(device))


def _act_state(step: LearnedStep) -> dict:
    qp = step.qparams()
    return {"scale": qp.scale, "zero_point": qp.zero_point, "qmin": qp.qmin, "qmax": qp.qmax,
            "axis": -1 if qp.axis is None else qp.axis, "label": step.label}


def _load_region(region: Region, learners: Learners, gm, state: ResumeState, device: str) -> None:
    """A region finished before the interruption: its saved decisions, exactly."""
    for name in region.layers:
        learners.weights[name].fix(state.data["weights"][name])
    for name in region.act_quantizers:
        saved = state.data["acts"][name]
        qp = QParams(saved["scale"], saved["zero_point"], saved["qmin"], saved["qmax"],
                     None if saved["axis"] == -1 else saved["axis"])
        learners.acts[name] = _swap_step(gm.get_submodule(name), LearnedStep(qp, learners.mode, saved["label"]).to(device))


def _store(gm: fx.GraphModule, records: dict[str, LayerQuant], learners: Learners) -> None:
    """Write the hard integers and learned steps into the graph and the records; detach the learners."""
    for name, rec in records.items():
        rec.weight_int = learners.weights[name].hard_int().cpu()
        set_param(gm, rec.weight_target, dequantize_int(rec.weight_int, rec.weight_qparams))
        object.__setattr__(gm.get_submodule(f"edgeq_weight_{name}"), "learner", None)
    for name, module in gm.named_children():
        if isinstance(module, ActQuant):
            step = learners.acts[name]
            granularity, scheme = step.label.split("/")
            module.spec = dataclasses.replace(module.spec, granularity=granularity, symmetric=scheme == "sym")
            module.load(step.qparams())
            object.__setattr__(module, "learner", None)
    for rec in records.values():
        rec.act_spec = gm.get_submodule(rec.act_module).spec
    round_biases(gm, records)


def _output_gradients(gm: fx.GraphModule, learners: Learners, regions: list[Region], x: list[torch.Tensor],
                      spec: ReconSpec, device: str) -> dict[str, torch.Tensor]:
    """Fisher weights for every region output, on the float model: (|g| + 1)², as in BRECQ's code.

    g is the gradient of the cross-entropy against the float model's own prediction (no labels needed)
    with respect to the output, per sample; the + 1 keeps the plain squared error as the floor, so the
    weighting only adds emphasis where the task loss is sensitive.
    """
    wanted = {name for r in regions for name in r.outputs}
    grads: dict[str, list[torch.Tensor]] = {name: [] for name in wanted}
    learners.mode.value = "float"
    for s in _batches(len(x[0]), spec.batch_size):
        values: dict[str, torch.Tensor] = {}
        batch = [t[s].to(device).requires_grad_(True) if t.is_floating_point() else t[s].to(device) for t in x]
        logits = flatten_outputs(_Recorder(gm, wanted, values).run(*batch))[0]
        logits = logits.reshape(-1, logits.shape[-1])  # classes on the last axis ([B, C] or [B, T, C])
        loss = torch.nn.functional.cross_entropy(logits, logits.detach().argmax(-1), reduction="sum")
        names = [n for n in wanted if n in values and values[n].requires_grad]
        for name, g in zip(names, torch.autograd.grad(loss, [values[n] for n in names], allow_unused=True)):
            g = torch.zeros_like(values[name]) if g is None else g.detach()
            grads[name].append(((g.abs() + 1) ** 2).cpu())
    return {name: torch.cat(parts) for name, parts in grads.items() if parts}


class _Recorder(fx.Interpreter):
    def __init__(self, gm, wanted, values):
        super().__init__(gm)
        self.wanted, self.values = wanted, values

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.wanted and isinstance(out, torch.Tensor):
            self.values[n.name] = out
        return out

