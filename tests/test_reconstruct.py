"""Block reconstruction: AdaRound, LSQ steps, regions, determinism, kill-and-resume, NaN fallback."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
import torch

from edgeq import api
from edgeq.bundle import float_graph, read_bundle
from edgeq.quant.fakequant import quantize_int
from edgeq.quant.observers import QParams, compute_qparams
from edgeq.quant.recipe import LayerSpec
from edgeq.reconstruct.learners import AdaRound, LearnedStep, Mode, _qdrop_mask
from edgeq.reconstruct.state import resume_dir
from edgeq.reconstruct.triage import Budget, Triage
from edgeq.trace.graphutil import get_attr

from conftest import TINY

# reconstruction only, every region for every iteration (time_budget=0: the thorough, reproducible mode)
FAST = dict(iters=40, calib_size=48, batch_size=16, latency_search=False, time_budget=0)


def digest(bundle) -> str:
    return hashlib.sha256((bundle / "quant.safetensors").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def recon_bundle(tmp_path_factory, calib_npy):
    out = tmp_path_factory.mktemp("recon") / "tiny.edgeq"
    api.quantize(TINY, str(calib_npy), "w8a8", out, seed=0, **FAST)
    return out


def test_adaround_starts_at_nearest_and_ends_hard():
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3)
    qp = compute_qparams(w.amin((1, 2, 3)), w.amax((1, 2, 3)), LayerSpec(bits=4, granularity="per_channel",
                                                                       symmetric=True), axis=0)
    ada = AdaRound(w, qp, Mode())
    assert torch.equal(ada.hard_int(), quantize_int(w, qp))  # hard decision starts at round-to-nearest
    opt = torch.optim.Adam([ada.v], lr=0.05)
    for it in range(400):  # the regulariser alone, annealed 20 -> 2, must drive every h to 0 or 1
        beta = 2 + 18 * (1 - it / 400)
        opt.zero_grad()
        ada.regularizer(beta).backward()
        opt.step()
    h = ada.h()
    assert torch.all((h == 0) | (h == 1))
    assert int((ada.hard_int().int() - quantize_int(w, qp).int()).abs().max()) <= 1


def test_lsq_gradient_matches_numerical_derivative():
    """LSQ's step gradient is the derivative of the quantizer with its rounding residual held fixed."""
    torch.manual_seed(0)
    x = torch.randn(64) * 3
    qp = QParams(torch.tensor([0.05]), torch.tensor([128], dtype=torch.int32), 0, 255, None)
    step = LearnedStep(qp, Mode(), "per_tensor/asym")
    out = step.quantize(x)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    grad = step.scale.grad.item()
    assert np.isfinite(grad)

    xd, up = x.double(), upstream.double()
    s0 = float(step.scale.detach())
    residual = torch.round(xd / s0) - xd / s0

    def surrogate(s: float) -> float:
        q = torch.clamp(xd / s + residual + 128, 0, 255)
        return float(((q - 128) * s * up).sum())

    eps = 1e-6
    numeric = (surrogate(s0 + eps) - surrogate(s0 - eps)) / (2 * eps)
    factor = 1.0 / np.sqrt(x.numel() * 255)  # LSQ gradient scaling
    assert grad == pytest.approx(numeric * factor, rel=1e-3)


@pytest.mark.parametrize("axis", [None, 1])
def test_fused_lsq_with_qdrop_matches_plain_autograd(axis):
    """The fused quantizer (QDrop's mask inside LSQ's node) gives the gradients that the same formula written
    with autograd-tracked steps gives: straight-through rounding, LSQ's scaled step, QDrop's where."""
    torch.manual_seed(0)
    x = (torch.randn(4, 3, 5) * 3).requires_grad_(True)
    scale = torch.tensor([0.05, 0.08, 0.11]) if axis == 1 else torch.tensor([0.05])
    zp = torch.tensor([128, 120, 131], dtype=torch.int32) if axis == 1 else torch.tensor([128], dtype=torch.int32)
    step = LearnedStep(QParams(scale, zp, 0, 255, axis), Mode(), "label")
    keep = torch.rand(x.shape) < 0.5
    upstream = torch.randn(x.shape)
    (step.quantize(x, keep) * upstream).sum().backward()

    shape = [1, 3, 1] if axis == 1 else [1, 1, 1]
    xr = x.detach().clone().requires_grad_(True)
    sr = scale.clone().requires_grad_(True)
    gs = 1.0 / np.sqrt(x.numel() / scale.numel() * 255)
    s = (sr * gs + (sr - sr * gs).detach()).view(shape)   # LSQ: value s, gradient scaled by gs
    z = zp.float().view(shape)
    scaled = xr / s
    rounded = scaled + (scaled.round() - scaled).detach()  # straight-through round
    reference = torch.where(keep, xr, (torch.clamp(rounded + z, 0, 255) - z) * s)
    (reference * upstream).sum().backward()
    assert torch.allclose(x.grad, xr.grad)
    assert torch.allclose(step.scale.grad, sr.grad, rtol=1e-4, atol=1e-6)


def test_qdrop_mask_keeps_about_the_given_fraction():
    generator = torch.Generator().manual_seed(0)
    for prob in (0.5, 0.2):
        mask = _qdrop_mask((8, 16, 32, 32), prob, generator)
        assert mask.dtype == torch.bool and mask.shape == (8, 16, 32, 32)
        assert abs(float(mask.float().mean()) - prob) < 0.01


def test_quantizer_round_trip_clamping_and_all_positive_zero_point():
    x = torch.linspace(0.0, 6.0, 101)  # all positive: the zero-point must sit at qmin, not overflow
    for bits in (8, 6, 4):
        qp = compute_qparams(x.min().view(1), x.max().view(1), LayerSpec(bits=bits), axis=None)
        assert qp.qmin <= int(qp.zero_point) <= qp.qmax and int(qp.zero_point) == 0
        q = quantize_int(x, qp)
        assert int(q.min()) >= qp.qmin and int(q.max()) <= qp.qmax
        back = (q.float() - qp.zero_point.float()) * qp.scale
        assert float((back - x).abs().max()) <= float(qp.scale) / 2 + 1e-6
        step = LearnedStep(qp, Mode(), "per_tensor/asym")
        clamped = step(torch.tensor([-5.0, 100.0]))
        assert clamped.tolist() == pytest.approx([0.0, float((qp.qmax - qp.zero_point) * qp.scale)])
    neg = compute_qparams(torch.tensor([-4.0]), torch.tensor([-1.0]), LayerSpec(bits=8), axis=None)
    assert int(neg.zero_point) == 255  # all-negative: zero-point at qmax, still in range


def test_reconstruction_improves_and_records_every_block(recon_bundle):
    m = json.loads((recon_bundle / "manifest.json").read_text())
    recon = m["reconstruction"]
    assert recon["fallbacks"] == [] and recon["spec"]["iterations"] == 40
    kinds = [k for r in recon["regions"] for k in r["kinds"]]
    assert "bridge" in kinds and "attention" in kinds
    bridge_regions = [r for r in recon["regions"] if "bridge" in r["kinds"]]
    assert all(len(r["kinds"]) >= 2 for r in bridge_regions)  # learned jointly with the block before
    final = [r["loss_learned"] if r["status"] == "learned" else r["loss_chosen"] for r in recon["regions"]]
    assert all(f <= r["loss_observers"] * (1 + 1e-6) for f, r in zip(final, recon["regions"]))
    learned = [r for r in recon["regions"] if r["status"] == "learned"]
    assert len(learned) >= len(recon["regions"]) // 2 and all(r["loss_learned"] <= r["loss_chosen"] for r in learned)
    roundings = {d["rounding"] for d in m["layers"].values()}
    assert "adaround" in roundings and roundings <= {"adaround", "nearest (learning did not lower the block loss)"}
    assert m["fidelity_fakequant_vs_float"]["cosine"] >= recon["fidelity_observers_vs_float"]["cosine"] - 1e-4
    assert m["norm_placement"]["batch_norm_folded"] == 5 and m["norm_placement"]["layer_norm_float"] == 2


def test_learned_weights_within_one_step_of_nearest(recon_bundle):
    bundle = read_bundle(recon_bundle)
    gm = float_graph(bundle)  # BatchNorm folded, as the reconstruction saw it
    moved = 0
    for name, layer in bundle.manifest["layers"].items():
        q = bundle.tensors[f"weight.{name}.int"].int()
        meta = layer["weight_qparams"]
        qp = QParams(bundle.tensors[f"weight.{name}.scale"], bundle.tensors[f"weight.{name}.zero_point"],
                     meta["qmin"], meta["qmax"], meta["axis"])
        nearest = quantize_int(_float_weight(gm, name), qp).int()
        assert int((q - nearest).abs().max()) <= 1
        moved += int((q != nearest).sum())
    assert moved > 0  # AdaRound changed some decisions


def _float_weight(gm, layer_name):
    node = next(n for n in gm.graph.nodes if n.name == layer_name)
    return get_attr(gm, node.args[1].target).detach()


def test_same_seed_same_integers(recon_bundle, calib_npy, tmp_path):
    again = tmp_path / "again.edgeq"
    api.quantize(TINY, str(calib_npy), "w8a8", again, seed=0, **FAST)
    assert digest(again) == digest(recon_bundle)


def test_kill_and_resume_gives_the_same_weights(recon_bundle, calib_npy, tmp_path):
    out = tmp_path / "killed.edgeq"
    cmd = [sys.executable, "-m", "edgeq.cli", "quantize", "--model", TINY, "--calib", str(calib_npy),
           "-o", str(out), "--iters", "40", "--calib-size", "48", "--batch-size", "16", "--time-budget", "0", "--json",
           "--no-latency-search"]
    state_file = resume_dir(out) / "state.pt"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state_file.is_file() and torch.load(state_file, weights_only=True)["regions"].__len__() >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not out.exists() and state_file.is_file()
    result = api.quantize(TINY, str(calib_npy), "w8a8", out, seed=0, resume=True, **FAST)
    assert result["bundle"] == str(out)
    assert digest(out) == digest(recon_bundle)
    assert not resume_dir(out).exists()  # the state is removed once the bundle is written


def test_nan_block_falls_back_and_the_rest_learns(calib_npy, tmp_path):
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32) * 4)
    out = tmp_path / "fragile.edgeq"
    spec = f"{os.path.dirname(__file__)}/tiny_models.py:fragile_net"
    recipe = tmp_path / "learn-all.yaml"   # every region is worth learning, however small its error
    recipe.write_text("edgeq_recipe: 1\nname: w8a8-learn-all\nbase: w8a8\nreconstruction: {learn_above: 0.0}\n")
    result = api.quantize(spec, str(data), str(recipe), out, iters=20, batch_size=16, latency_search=False)
    m = json.loads((out / "manifest.json").read_text())
    regions = {r["name"]: r for r in m["reconstruction"]["regions"]}
    assert result["reconstruction"]["fallbacks"] == ["blocks.0"]
    assert regions["blocks.0"]["status"] == "fallback" and "non-finite" in regions["blocks.0"]["reason"]
    others = [r["status"] for n, r in regions.items() if n != "blocks.0"]
    assert "learned" in others and set(others) <= {"learned", "observers"}
    layer = next(d for d in m["layers"].values() if d["block"] == "blocks.0")
    assert layer["rounding"].startswith("nearest")
    out_q = api.evaluate(out, str(data))  # the model is not poisoned: finite, close to float
    assert out_q["vs_fp32"]["cosine"] > 0.99


def test_sub8bit_exports_exactly_to_onnx(calib_npy, tmp_path):
    out = tmp_path / "w6a6.edgeq"
    api.quantize(TINY, str(calib_npy), "w6a6", out, **FAST)
    m = json.loads((out / "manifest.json").read_text())
    precisions = {d["precision"] for d in m["layers"].values()}
    assert precisions == {"w6a6", "w8a8"}  # stem and head stay 8-bit
    record = api.export(out, "onnx", tmp_path / "w6a6.onnx")
    assert record["fidelity_vs_torch"]["cosine"] > 0.9999
    model = onnx.load(str(tmp_path / "w6a6.onnx"))
    assert any(n.op_type in ("Clip", "Min", "Max") for n in model.graph.node)
    bundle = read_bundle(out)
    for name, layer in m["layers"].items():
        if layer["precision"] == "w6a6":
            q = bundle.tensors[f"weight.{name}.int"]
            assert -32 <= int(q.min()) and int(q.max()) <= 31


def test_fisher_objective_and_recipe_knobs(tmp_path):
    recipe = tmp_path / "fisher.yaml"
    recipe.write_text("edgeq_recipe: 1\nname: w8a8-fisher\nbase: w8a8\n"
                      "reconstruction: {objective: fisher, iterations: 10, drop_prob: 0.0, choose_scheme: false}\n")
    out = tmp_path / "fisher.edgeq"
    data = tmp_path / "c.npy"  # a model with a depthwise conv that may take per-channel input scales
    np.save(data, np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32))
    api.quantize(f"{os.path.dirname(__file__)}/tiny_models.py:fused_depthwise", str(data), str(recipe), out,
                 batch_size=16, latency_search=False)
    m = json.loads((out / "manifest.json").read_text())
    spec = m["reconstruction"]["spec"]
    assert spec["objective"] == "fisher" and spec["iterations"] == 10 and spec["drop_prob"] == 0.0
    assert m["reconstruction"]["fallbacks"] == []
    choices = [c for r in m["reconstruction"]["regions"] for c in r["choices"].values()]
    assert choices and all(label.endswith("/sym") for c in choices for label in c["losses"])  # no asym tried
    assert m["fidelity_fakequant_vs_float"]["cosine"] > 0.999


def test_depthwise_into_conv_exports_and_runs_in_onnxruntime(tmp_path):
    """Per-channel input scales are not offered where the dwconv output is requantized: ORT would fuse
    DQ→Conv→Q into QLinearConv, which rejects per-channel input zero-points (fastvit_t8 crashed on it)."""
    from edgeq.runtimes import ort as ort_cpu
    spec = f"{os.path.dirname(__file__)}/tiny_models.py:depthwise_into_conv"
    data = tmp_path / "c.npy"
    np.save(data, np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32))
    out = tmp_path / "d.edgeq"
    api.quantize(spec, str(data), "w8a8", out, iters=5, batch_size=16, latency_search=False)
    regions = json.loads((out / "manifest.json").read_text())["reconstruction"]["regions"]
    dw_choices = next(r["choices"] for r in regions if r["name"] == "dw")
    assert dw_choices and not any("per_channel" in label for c in dw_choices.values() for label in c["losses"])
    record = api.export(out, "onnx", tmp_path / "d.onnx")
    assert record["fidelity_vs_torch"]["cosine"] > 0.999
    outputs = ort_cpu.run(ort_cpu.session(tmp_path / "d.onnx"), np.load(data))[0]
    assert np.isfinite(outputs).all()


def test_time_budget_learns_only_where_it_pays(tmp_path, calib_npy):
    """Reconstruction where it pays: regions whose observer-only error is small keep the observers; the most
    harmful ones are learned first; a region whose hard loss does not move stops early; nothing
    fits a budget smaller than any region."""
    recipe = tmp_path / "where.json"   # w4a8 (every region is harmful enough to learn) with w8a8's threshold
    recipe.write_text(json.dumps({"edgeq_recipe": 1, "base": "w4a8", "name": "w4a8-where-it-pays",
                                  "reconstruction": {"learn_above": 1e-3, "patience": 50}}))
    out = tmp_path / "b.edgeq"
    api.quantize(TINY, str(calib_npy), str(recipe), out, time_budget=30.0, latency_search=False)
    recon = json.loads((out / "manifest.json").read_text())["reconstruction"]
    regions, triage = recon["regions"], recon["triage"]
    assert triage["learn_above_nmse"] == 1e-3 and len(triage["nmse"]) == len(regions)
    for region in regions:
        if region["nmse_observers"] <= 1e-3:
            assert region["status"] == "observers" and "would not pay" in region["reason"], region
            assert region["eval_samples"] <= 32   # not learned: measured on the scheme-choice samples only
    harmful = [r for r in regions if r["nmse_observers"] > 1e-3]
    assert harmful and all(r["status"] in ("learned", "observers") for r in harmful)
    learned = [r for r in regions if r["status"] == "learned"]
    worst = max(harmful, key=lambda r: r["nmse_observers"])   # learned first (kept only if it lowered the loss)
    assert worst["status"] == "learned" or "did not lower" in worst["reason"], worst
    assert all(r["iterations"] == 300 or r["stopped"] in ("no progress", "time budget") for r in learned), learned
    assert all(r["loss_learned"] <= r["loss_chosen"] for r in learned)
    api.quantize(TINY, str(calib_npy), str(recipe), tmp_path / "none.edgeq", time_budget=1e-4,
                 latency_search=False)
    regions = json.loads((tmp_path / "none.edgeq" / "manifest.json").read_text())["reconstruction"]["regions"]
    assert all(r["status"] == "observers" for r in regions)
    assert any("did not fit the 0 s time budget" in r["reason"] for r in regions), regions


def test_a_region_whose_hard_loss_does_not_move_stops_early(tmp_path, calib_npy):
    """Nothing can change (learning rates 0): after two checks the hard loss is where it started, so every
    region stops at 2 × patience steps instead of running all 300."""
    recipe = tmp_path / "still.json"
    recipe.write_text(json.dumps({"edgeq_recipe": 1, "base": "w4a8", "name": "still", "reconstruction": {
        "patience": 50, "weight_lr": 0.0, "act_lr": 0.0}}))
    api.quantize(TINY, str(calib_npy), str(recipe), tmp_path / "s.edgeq", latency_search=False)
    regions = json.loads((tmp_path / "s.edgeq" / "manifest.json").read_text())["reconstruction"]["regions"]
    assert regions and all(r["iterations"] == 100 and r["stopped"] == "no progress" for r in regions), regions
    # stop_early: false (w6a6's choice) keeps the best probed state but runs every iteration
    recipe.write_text(json.dumps({"edgeq_recipe": 1, "base": "w4a8", "name": "still", "reconstruction": {
        "patience": 50, "stop_early": False, "iterations": 120, "weight_lr": 0.0, "act_lr": 0.0}}))
    api.quantize(TINY, str(calib_npy), str(recipe), tmp_path / "f.edgeq", latency_search=False)
    regions = json.loads((tmp_path / "f.edgeq" / "manifest.json").read_text())["reconstruction"]["regions"]
    assert regions and all(r["iterations"] == 120 and not r.get("stopped") for r in regions), regions


def test_budget_corrects_the_estimates_by_the_measured_step_time():
    """Steps that take twice the triage's estimate double what the regions still to come are expected to need."""
    plan = Triage(nmse=[0.1, 0.05, 0.02], estimate=[30.0, 30.0, 30.0], shortest=[10.0, 10.0, 10.0],
                  selected={0, 1, 2}, time_budget=60.0, learn_above=1e-3)
    budget = Budget(plan, iterations=300)
    assert budget.allowance(0) == pytest.approx(40.0)   # 60 minus the shortest runs of regions 1 and 2
    budget.spend(0, 20.0, 100)   # 100 steps were expected to take 10 s
    assert budget.correction == pytest.approx(2.0)
    assert budget.allowance(1) == pytest.approx(20.0)   # 60 - 20 spent - 2 × 10 reserved for region 2
    assert budget.eta(0, 3, elapsed=20.0) == pytest.approx(40.0)   # 2 × 60 s planned, capped by what is left


def test_a_symmetric_recipe_keeps_symmetric_unless_asymmetric_clearly_wins():
    from edgeq.reconstruct.engine import ASYMMETRIC_MUST_DIVIDE_ERROR_BY as factor, _preferring_symmetric
    close = {"per_tensor/sym": 0.99 * factor, "per_tensor/asym": 1.0, "per_channel/sym": 2.0}
    assert _preferring_symmetric(close, recipe_symmetric=True) == "per_tensor/sym"
    assert _preferring_symmetric(close, recipe_symmetric=False) == "per_tensor/asym"   # plain minimum
    clear = {"per_tensor/sym": 1.01 * factor, "per_tensor/asym": 1.0}
    assert _preferring_symmetric(clear, recipe_symmetric=True) == "per_tensor/asym"
    per_channel = {"per_channel/asym": 1.0, "per_channel/sym": 1.2, "per_tensor/sym": 1.1}
    assert _preferring_symmetric(per_channel, recipe_symmetric=True) == "per_channel/sym"  # same granularity
