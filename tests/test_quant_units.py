"""Observers, quantization parameters and recipes."""
import dataclasses

import pytest
import torch

from edgeq.errors import RecipeError
from edgeq.quant.fakequant import dequantize_int, quantize_int
from edgeq.quant.observers import Observer, compute_qparams, fake_quant, observe_weight
from edgeq.quant.recipe import BUILTIN, LayerSpec, load_recipe, recipe_from_dict

ASYM = LayerSpec(bits=8, symmetric=False)
SYM = LayerSpec(bits=8, symmetric=True, granularity="per_channel")


def test_asymmetric_all_positive_range_keeps_zero_exact():
    qp = compute_qparams(torch.tensor([0.5]), torch.tensor([6.0]), ASYM, None)
    # the range is widened to include 0, so the zero-point sits at qmin and never overflows
    assert int(qp.zero_point) == 0 and qp.qmin == 0 and qp.qmax == 255
    x = torch.tensor([0.0, 0.5, 3.0, 6.0])
    torch.testing.assert_close(fake_quant(x, qp)[0], torch.tensor(0.0))
    assert float((fake_quant(x, qp) - x).abs().max()) <= float(qp.scale) / 2 + 1e-6


def test_asymmetric_all_negative_range():
    qp = compute_qparams(torch.tensor([-4.0]), torch.tensor([-1.0]), ASYM, None)
    assert int(qp.zero_point) == 255
    assert float(fake_quant(torch.tensor([-4.0]), qp)) == pytest.approx(-4.0, abs=float(qp.scale))


def test_symmetric_per_channel_roundtrip():
    w = torch.randn(8, 4, 3, 3) * torch.linspace(0.1, 3, 8).view(-1, 1, 1, 1)
    qp = compute_qparams(w.amin((1, 2, 3)), w.amax((1, 2, 3)), SYM, 0)
    q = quantize_int(w, qp)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    assert torch.all(qp.zero_point == 0)
    err = (dequantize_int(q, qp) - w).abs().amax((1, 2, 3))
    assert torch.all(err <= qp.scale / 2 + 1e-7)
    torch.testing.assert_close(dequantize_int(q, qp), fake_quant(w, qp))


@pytest.mark.parametrize("method", ["minmax", "mse"])
def test_symmetric_activation_goes_unsigned_from_zero_only_when_never_negative(method):
    spec = LayerSpec(bits=8, symmetric=True, observer=method)
    relu_out, gelu_out = torch.rand(4096) * 6.0, torch.rand(4096) * 6.0 - 0.17
    unsigned = Observer(spec, None, activation=True)
    unsigned.observe(relu_out)
    qp = unsigned.qparams()
    # zero-point 0 (what OpenVINO runs fastest) with the whole 8-bit range on the values that occur
    assert (qp.qmin, qp.qmax, int(qp.zero_point)) == (0, 255, 0)
    assert quantize_int(relu_out, qp).dtype == torch.uint8
    assert float((fake_quant(relu_out, qp) - relu_out).abs().max()) <= 6.0 / 255 / 2 + 1e-6
    signed = Observer(spec, None, activation=True)
    signed.observe(gelu_out)
    assert (signed.qparams().qmin, signed.qparams().qmax, int(signed.qparams().zero_point)) == (-128, 127, 0)
    positive_weights = torch.rand(8, 4) + 0.1   # weights stay signed: runtimes take int8 weights only
    assert observe_weight(positive_weights, SYM).qmin == -128


def test_clamping_outside_range():
    qp = compute_qparams(torch.tensor([-1.0]), torch.tensor([1.0]), ASYM, None)
    out = fake_quant(torch.tensor([-10.0, 10.0]), qp)
    assert float(out[0]) == pytest.approx(-1.0, abs=float(qp.scale)) and float(out[1]) == pytest.approx(1.0, abs=float(qp.scale))


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_observers_on_outlier_heavy_data(method):
    torch.manual_seed(0)
    x = torch.randn(64, 16, 8, 8)
    x[0, 0, 0, 0] = 60.0
    obs = Observer(dataclasses.replace(ASYM, observer=method), channel_axis=1, seed=0)
    obs.observe(x)
    qp = obs.qparams()
    span = float(qp.scale) * 255
    if method == "minmax":
        assert span == pytest.approx(60.0 + float(-x.min()), rel=1e-4)
    else:  # both clip the single outlier and keep the bulk of the distribution finely resolved
        assert span < 30.0
        bulk = x.clone()
        bulk[0, 0, 0, 0] = 0
        minmax = Observer(ASYM, 1)
        minmax.observe(x)
        assert (fake_quant(bulk, qp) - bulk).pow(2).mean() < (fake_quant(bulk, minmax.qparams()) - bulk).pow(2).mean()


def test_observer_is_deterministic():
    x = torch.randn(32, 8, 16, 16)
    a, b = Observer(dataclasses.replace(ASYM, observer="mse"), 1, seed=3), \
        Observer(dataclasses.replace(ASYM, observer="mse"), 1, seed=3)
    a.observe(x)
    b.observe(x)
    assert a.qparams().scale.equal(b.qparams().scale)


def test_per_channel_activation_observer():
    x = torch.randn(16, 4, 8, 8) * torch.tensor([0.1, 1, 10, 100]).view(1, -1, 1, 1)
    obs = Observer(dataclasses.replace(ASYM, granularity="per_channel"), channel_axis=1)
    obs.observe(x)
    qp = obs.qparams()
    assert qp.scale.shape == (4,) and qp.axis == 1
    assert torch.all(qp.scale[1:] > qp.scale[:-1])


def test_mse_weight_observer_never_worse_than_minmax():
    w = torch.randn(16, 32) ** 3
    mse = observe_weight(w, dataclasses.replace(SYM, observer="mse"))
    mm = observe_weight(w, SYM)
    err = lambda qp: (fake_quant(w, qp) - w).pow(2).mean(1)  # noqa: E731
    assert torch.all(err(mse) <= err(mm) + 1e-9)


def test_recipe_yaml_and_json_roundtrip(tmp_path):
    recipe = BUILTIN["w8a8-fast"]
    (tmp_path / "r.yaml").write_text(recipe.to_yaml())
    assert load_recipe(str(tmp_path / "r.yaml")) == recipe
    import json
    (tmp_path / "r.json").write_text(json.dumps(recipe.to_dict()))
    assert load_recipe(str(tmp_path / "r.json")) == recipe


def test_recipe_overrides_first_match_wins():
    recipe = recipe_from_dict({"edgeq_recipe": 1, "overrides": [
        {"match": "type:dwconv", "weights": {"bits": 6}},
        {"match": "re:blocks\\..*", "float": True},
    ]})
    assert recipe.resolve("conv2d_3", "blocks.0.dw", "dwconv")[0].bits == 6
    assert recipe.resolve("conv2d_2", "blocks.0.conv1", "conv") is None
    assert recipe.resolve("linear", "head", "linear") == (recipe.weights, recipe.activations)


def test_recipe_inherits_the_base_overrides_unless_it_gives_its_own():
    """A recipe based on w4a8 that only changes reconstruction keeps w4a8's 8-bit stem and head."""
    tuned = recipe_from_dict({"edgeq_recipe": 1, "base": "w4a8", "reconstruction": {"patience": 50}})
    assert tuned.overrides == BUILTIN["w4a8"].overrides and tuned.resolve("c", "stem.conv", "conv", "stem")[0].bits == 8
    own = recipe_from_dict({"edgeq_recipe": 1, "base": "w4a8", "overrides": []})
    assert own.overrides == () and own.resolve("c", "stem.conv", "conv", "stem")[0].bits == 4


@pytest.mark.parametrize("bad,fragment", [
    ({"edgeq_recipe": 1, "weights": {"bits": 12}}, "bits"),
    ({"edgeq_recipe": 1, "activations": {"observer": "magic"}}, "observer"),
    ({"edgeq_recipe": 1, "overrides": [{"match": "type:pool"}]}, "unknown layer type"),
    ({"edgeq_recipe": 1, "overrides": [{"match": "re:("}]}, "bad regular expression"),
    ({"edgeq_recipe": 1, "calibration": {"samples": 0}}, "positive"),
    ({"weights": {}}, "edgeq_recipe must be"),
    ([1, 2], "mapping"),
])
def test_malformed_recipes(bad, fragment):
    with pytest.raises(RecipeError, match=fragment):
        recipe_from_dict(bad)
