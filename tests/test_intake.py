"""Model intake: zoo, timm + weights, file.py:factory, package.module:factory, .pt2."""
import pytest
import torch

from edgeq.errors import CheckpointError, InputShapeError, ModelSpecError
from edgeq.models.intake import load_model, parse_input_shape
from edgeq.trace.capture import capture


def test_file_factory_takes_shape_from_model(tiny_spec):
    loaded = load_model(tiny_spec)
    assert loaded.input_spec.shape == (1, 3, 32, 32)
    assert isinstance(loaded.module, torch.nn.Module) and not loaded.module.training


def test_module_factory():
    loaded = load_model("tiny_models:tiny_hybrid", input_shape=(1, 3, 32, 32))
    assert loaded.details["source"] == "factory"


def test_timm_with_weights_roundtrip(tmp_path):
    import timm
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=7, in_chans=1)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    loaded = load_model("timm:resnet18", weights=str(tmp_path / "w.pt"), num_classes=7, in_chans=1,
                        input_shape=(1, 1, 64, 64))
    x = torch.randn(1, 1, 64, 64)
    torch.testing.assert_close(loaded.module(x), model.eval()(x))
    assert loaded.input_spec.shape == (1, 1, 64, 64)


def test_timm_weights_wrong_classes(tmp_path):
    import timm
    torch.save(timm.create_model("resnet18", num_classes=7).state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="mis-shaped"):
        load_model("timm:resnet18", weights=str(tmp_path / "w.pt"), num_classes=10)


class Opaque:
    """Any class outside torch's weights_only allow-list."""


def test_pickled_objects_need_trust(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Opaque()}, tmp_path / "p.pt")
    with pytest.raises(CheckpointError, match="trust-pickle"):
        load_model("timm:resnet18", weights=str(tmp_path / "p.pt"))


def test_pt2_roundtrip(tmp_path, tiny_spec):
    loaded = load_model(tiny_spec)
    torch.export.save(capture(loaded), tmp_path / "m.pt2")
    again = load_model(str(tmp_path / "m.pt2"))
    assert again.module is None and again.input_spec.shape == (1, 3, 32, 32)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(capture(again).module()(x), loaded.module(x))
    with pytest.raises(InputShapeError, match="was exported for"):
        load_model(str(tmp_path / "m.pt2"), input_shape=(1, 3, 64, 64))


def test_zoo_models_load():
    from edgeq.models.zoo import ZOO
    assert len(ZOO) == 3
    for name, entry in ZOO.items():
        assert entry.checkpoint.is_file(), f"zoo checkpoint for {name} is missing"
        loaded = load_model(f"zoo:{name}")
        assert loaded.input_spec.shape == entry.input_shape
        assert loaded.details["training"]["test_top1_torch"] >= 0.88


@pytest.mark.parametrize("text,expected", [("1x3x224x224", (1, 3, 224, 224)), ("8x16", (8, 16))])
def test_parse_input_shape(text, expected):
    assert parse_input_shape(text) == expected


@pytest.mark.parametrize("spec", ["nope", "zoo:unknown", "timm:xyz_not_real", "os.path:nothing_here",
                                  "missing_file.py:factory"])
def test_bad_specs(spec):
    with pytest.raises(ModelSpecError):
        load_model(spec, input_shape=(1, 3, 32, 32))


def test_timm_random_init_is_the_same_model_every_load():
    """Variants of one report are quantized from separate loads and compared with each other's FP32."""
    import torch

    from edgeq.models.intake import load_model
    a, b = (load_model("timm:mobilevit_xxs", None, 10, None, None, False).module for _ in range(2))
    torch.manual_seed(123)   # the fixed initialisation neither depends on nor moves the global generator
    state = torch.random.get_rng_state()
    c = load_model("timm:mobilevit_xxs", None, 10, None, None, False).module
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, x), y, z in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(x, y) and torch.equal(x, z), name


def test_timm_random_init_has_no_dead_residual_branch():
    """timm zero-initialises the last norm of residual branches; OpenVINO folds such a branch away in the
    int8 graph only, which inflated the speed suite's int8 speed-ups (mobilevit_xxs, levit_128s)."""
    loaded = load_model("timm:levit_128s", None, 10, None, (1, 3, 224, 224), False)
    norms = [m for m in loaded.module.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)]
    assert norms and all(m.weight.any() for m in norms)
    assert "20 zero-initialised norm weights set to 1" in loaded.details["weights"]
    block = loaded.module.stages[0].blocks[0]
    with torch.no_grad():
        tokens = torch.randn(2, 196, 128)
        assert block.attn(tokens).std() > 1e-3 and block.mlp(tokens).std() > 1e-3   # both branches are live
