"""calib/*.yaml: the data set definitions the zoo and the bench use, and users' own."""
import numpy as np
import pytest

from edgeq.calibsets import CALIB_DIR, read_definition
from edgeq.data import load_data
from edgeq.errors import CalibrationError
from edgeq.models.intake import InputSpec

ZOO_INPUT = InputSpec((1, 1, 32, 32), mean=[0.286], std=[0.353])


@pytest.mark.parametrize("path", sorted(CALIB_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_definitions_load(path):
    definition = read_definition(path)
    assert definition.name == path.stem and definition.licence and definition.samples


def test_zoo_definition_is_what_calib_zoo_reads():
    plain = load_data("zoo", ZOO_INPUT, limit=256)
    defined = load_data(str(CALIB_DIR / "zoo-calib.yaml"), ZOO_INPUT)
    assert len(defined) == 256 and np.array_equal(plain.x, defined.x) and np.array_equal(plain.labels, defined.labels)
    assert len(load_data(str(CALIB_DIR / "zoo-test.yaml"), ZOO_INPUT, limit=100, default_split="test")) == 100


def test_user_definition_relative_source_seed_and_size(tmp_path):
    x = np.arange(20 * 3 * 8 * 8, dtype=np.float32).reshape(20, 3, 8, 8)
    np.savez(tmp_path / "set.npz", x=x, y=np.arange(20))
    (tmp_path / "mine.yaml").write_text("name: mine\nsource: set.npz\nsamples: 5\nseed: 3\nlicence: own data\n")
    data = load_data(str(tmp_path / "mine.yaml"), InputSpec((1, 3, 8, 8)))
    picked = np.random.default_rng(3).permutation(20)[:5]
    assert np.array_equal(data.x, x[picked]) and np.array_equal(data.labels, picked)


@pytest.mark.parametrize("text, message", [
    ("name: a\nsource: zoo:calib\nsamples: 0\nlicence: x\n", "field 'samples' must be a positive integer"),
    ("name: a\nsource: zoo:calib\nlicence: x\nsize: 3\n", "unknown field 'size'"),
    ("name: a\nlicence: x\n", "field 'source' must be a non-empty string"),
    ("name: a\nsource: zoo:calib\nlicence: x\npreprocessing: {resize: bicubic}\n",
     "preprocessing resize: 'bicubic' is not something edgeq does"),
])
def test_broken_definition_names_file_and_field(tmp_path, text, message):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(CalibrationError, match=message) as info:
        load_data(str(path), ZOO_INPUT)
    assert str(path) in str(info.value)
