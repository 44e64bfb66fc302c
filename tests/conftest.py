import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

TINY = f"{TESTS / 'tiny_models.py'}:tiny_hybrid"


@pytest.fixture(scope="session", autouse=True)
def private_latency_cache(tmp_path_factory):
    """Placement-search timings go to a per-session cache, not the user's ~/.cache/edgeq."""
    import os
    os.environ["EDGEQ_CACHE_DIR"] = str(tmp_path_factory.mktemp("edgeq-cache"))


@pytest.fixture(scope="session")
def tiny_spec() -> str:
    return TINY


@pytest.fixture(scope="session")
def calib_npy(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "calib.npy"
    np.save(path, np.random.default_rng(0).standard_normal((48, 3, 32, 32)).astype(np.float32))
    return path


@pytest.fixture(scope="session")
def labelled_npz(tmp_path_factory) -> Path:
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("data") / "eval.npz"
    np.savez(path, x=rng.standard_normal((40, 3, 32, 32)).astype(np.float32),
             y=rng.integers(0, 10, 40))
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, calib_npy) -> Path:
    from edgeq import api
    out = tmp_path_factory.mktemp("bundles") / "tiny.edgeq"
    api.quantize(TINY, str(calib_npy), "w8a8-fast", out, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_bundle) -> dict:
    from edgeq import api
    folder = tmp_path_factory.mktemp("onnx")
    return {p: api.export(tiny_bundle, "onnx", folder / f"tiny_{p}.onnx", precision=p)
            for p in ("int8", "fp32")}
