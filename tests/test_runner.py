"""edgeq-runner, the device side: torch-free, standalone as one copied file, the same Measurement schema as
``edgeq profile``, and one sentence (exit 2) for every bad input."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeq import runner

HEAVY = ("torch", "timm", "onnx", "click")


def _standalone(tmp_path: Path) -> Path:
    """The runner as the SSH host ships it: one file, away from the edgeq package."""
    copy = tmp_path / "edgeq_runner.py"
    shutil.copy(runner.__file__, copy)
    return copy


def _run(script: Path, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", str(script), *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_importing_the_runner_imports_nothing_heavy():
    code = ("import sys, edgeq.runner; print(json.dumps([m for m in %r if m in sys.modules]))" % (HEAVY,))
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_standalone_bench_matches_the_profile_schema(tmp_path, tiny_onnx):
    from edgeq import api
    script = _standalone(tmp_path)
    model = Path(tiny_onnx["int8"]["path"])
    probe = ("import runpy, sys, json\nsys.argv = %r\n"
             "try:\n    runpy.run_path(%r, run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print(json.dumps([m for m in %r if m in sys.modules]), file=sys.stderr)"
             % ([str(script), "--json", "bench", str(model), "--runs", "12", "--warmup", "2", "--threads", "1"],
                str(script), HEAVY))
    done = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []          # torch, onnx, click never loaded
    remote = json.loads(done.stdout)
    local = api.profile(model, runs=12, warmup=2, threads=1, batch=1)
    assert remote["schema"] == local["schema"] == "edgeq.measurement/1"
    assert set(local["batches"][0]) == set(remote["batches"][0])
    assert {"measured", "threads", "runs", "warmup", "fingerprint", "batches"} <= set(remote)
    assert len(remote["batches"][0]["samples_ms"]) == 12 and remote["batches"][0]["p50_ms"] > 0
    assert remote["fingerprint"]["isa"] == local["fingerprint"]["isa"]
    assert remote["device_state"]["throttled"] is False


def test_compare_returns_raw_times_per_model_in_blocks(tmp_path, tiny_onnx):
    script = _standalone(tmp_path)
    a, b = tiny_onnx["int8"]["path"], tiny_onnx["fp32"]["path"]
    done = _run(script, "--json", "compare", a, b, a, "--runs", "20", "--block", "5", "--threads", "1")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["block"] == 5 and [Path(m["artifact"]).name for m in result["models"]] == \
        [Path(a).name, Path(b).name, Path(a).name]
    assert all(len(m["samples_ms"]) == 20 for m in result["models"])
    from edgeq.profile.latency import block_ratio
    r = block_ratio(result["models"][0]["samples_ms"], result["models"][1]["samples_ms"], 5)
    assert r.low <= r.ratio <= r.high


@pytest.fixture(scope="module")
def zoo_int8(tmp_path_factory) -> Path:
    from edgeq import api
    folder = tmp_path_factory.mktemp("zoo")
    api.quantize("zoo:mobilevit_xxs", "zoo", "w8a8-fast", folder / "m.edgeq")
    return Path(api.export(folder / "m.edgeq", "onnx", folder / "m.onnx", precision="int8")["path"])


def test_predict_prepares_images_as_edgeq_does(tmp_path, zoo_int8):
    from PIL import Image

    from edgeq.models.zoo import FASHION_CLASSES, FASHION_MEAN, FASHION_STD, load_split
    from edgeq.preprocess import preprocess_uint8
    from edgeq.runtimes.ort import session
    images, labels = load_split("test")
    script = _standalone(tmp_path)
    sess = session(zoo_int8)
    for k in range(6):
        np.save(tmp_path / "img.npy", images[k])
        Image.fromarray(images[k]).save(tmp_path / "img.png")
        expected = sess.run(None, {sess.get_inputs()[0].name: preprocess_uint8(images[k:k + 1], 32, 1,
                                                                            FASHION_MEAN, FASHION_STD)})[0]
        for picture in ("img.npy", "img.png"):
            done = _run(script, "--json", "predict", zoo_int8, "--input", tmp_path / picture, "--top", "3")
            assert done.returncode == 0, done.stderr
            top = json.loads(done.stdout)["top"][0]
            assert top[0]["class"] == int(expected.argmax())
            assert top[0]["label"] == FASHION_CLASSES[top[0]["class"]] and len(top) == 3
    # a colour image of another size: resized and turned grey like edgeq's own preprocessing
    rgb = np.stack([np.kron(images[0], np.ones((2, 2), np.uint8))] * 3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / "big.png")
    done = _run(script, "--json", "predict", zoo_int8, "--input", tmp_path / "big.png")
    assert done.returncode == 0 and json.loads(done.stdout)["preprocessed_shape"] == [1, 1, 32, 32]


def test_info_describes_the_device(tmp_path):
    done = _run(_standalone(tmp_path), "--json", "info")
    found = json.loads(done.stdout)
    assert found["machine"]["cpu_count"] >= 1 and found["memory_mb"] > 0
    assert found["onnxruntime"] and "CPUExecutionProvider" in found["providers"]
    assert set(found) >= {"governor", "temperature_c", "throttle"}


def test_throttling_and_heating_are_flagged():
    cool = {"temperature_c": 48.0, "throttle": {"raw": "0x0", "now": [], "since_boot": []}}
    hot = {"temperature_c": 61.5, "throttle": {"raw": "0x20002", "now": ["arm frequency capped"],
                                               "since_boot": ["arm frequency capped"]}}
    change = runner.state_change(cool, hot)
    assert change["throttled"] and len(change["warnings"]) == 2 and "13.5 °C" in change["warnings"][1]
    assert runner.state_change(cool, cool) == {"before": cool, "after": cool, "throttled": False, "warnings": []}


@pytest.mark.parametrize("case", ["missing", "corrupt", "too big", "outside workdir", "timeout", "bad input",
                                  "bad runs"])
def test_bad_input_is_one_sentence(tmp_path, tiny_onnx, case):
    script = _standalone(tmp_path)
    model = tmp_path / "m.onnx"
    shutil.copy(tiny_onnx["int8"]["path"], model)
    (tmp_path / "corrupt.onnx").write_bytes(b"not a model")
    args = {"missing": ["bench", "nope.onnx"],
            "corrupt": ["bench", "corrupt.onnx"],
            "too big": ["--max-model-mb", "0.001", "bench", "m.onnx"],
            "outside workdir": ["--workdir", str(tmp_path / "box"), "bench", "../m.onnx"],
            "timeout": ["--timeout", "1", "bench", "m.onnx", "--runs", "10000000"],
            "bad input": ["predict", "m.onnx", "--input", "corrupt.onnx"],
            "bad runs": ["bench", "m.onnx", "--runs", "0"]}[case]
    (tmp_path / "box").mkdir()
    done = _run(script, *args, cwd=tmp_path)
    expected = {"missing": "does not exist", "corrupt": "cannot load", "too big": "over the runner's limit",
                "outside workdir": "outside the runner's working directory", "timeout": "exceeded its timeout",
                "bad input": "not a readable image", "bad runs": "must be positive"}[case]
    assert done.returncode == 2 and expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_the_runner_alone_builds_as_its_own_wheel(tmp_path):
    """runner/ packages edgeq/runner.py alone (a link, one copy) for `pip install ./runner` on a device."""
    import zipfile
    source = tmp_path / "runner"   # a copy (the link resolved), so the build leaves nothing in the checkout
    shutil.copytree(Path(__file__).resolve().parents[1] / "runner", source)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path), str(source)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    wheel = next(tmp_path.glob("edgeq_runner-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert z.read("edgeq_runner.py") == Path(runner.__file__).read_bytes()
        assert z.read("edgeq_audio.py") == Path(runner.__file__).with_name("audio.py").read_bytes()
        metadata = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
        entry = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert not any(n.startswith("edgeq/") for n in names) and "edgeq-runner = edgeq_runner:main" in entry
    requires = {re.split(r"[ <>=;\[]", line.split(":", 1)[1].strip())[0].lower()
                for line in metadata.splitlines() if line.startswith("Requires-Dist")}
    assert requires == {"numpy", "onnxruntime", "pillow"}   # pillow: the optional [images] extra


def test_a_block_waits_for_spinning_worker_threads_to_stop():
    """ONNX Runtime's workers spin on a core for tens of ms after a run; the next timed block starts only once
    the process is quiet (a thread spinning for 80 ms here), and at once when nothing spins."""
    import threading
    import time

    def spin(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
    worker = threading.Thread(target=spin, args=(0.08,))
    start = time.perf_counter()
    worker.start()
    runner.pause_until_quiet(0.0)
    waited = time.perf_counter() - start
    worker.join()
    assert 0.07 <= waited < 0.3
    start = time.perf_counter()
    runner.pause_until_quiet(0.0)
    assert time.perf_counter() - start < 0.05
