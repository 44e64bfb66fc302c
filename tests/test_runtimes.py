"""Runtimes as plugins and targets as files: every registered runtime through the same contract, every
shipped target file loads, broken ones are refused naming file and field, and a Measurement round-trips."""
import json

import numpy as np
import pytest

from edgeq import api
from edgeq.errors import EdgeqError
from edgeq.profile.measure import SCHEMA
from edgeq.runtimes import get_runtime, runtimes
from edgeq.runtimes.base import EXPORT_FORMS, PRECISIONS, Session
from edgeq.target import DEFAULT_TARGET, get_target, read_target, shipped

SHIPPED = ["x86-cpu-ort", "x86-cpu-openvino", "rpi4-ort", "rpi5-ort", "jetson-orin-trt", "nvidia-gpu-trt",
           "apple-m-coreml"]


@pytest.mark.parametrize("name", sorted(runtimes()))
def test_runtime_contract(name, tiny_onnx, calib_npy):
    """Declares a name, an artifact form and a fingerprint; where it can run, its session's outputs match
    ONNX Runtime's and it times runs; where it cannot, it says why in one sentence."""
    runtime = get_runtime(name)
    assert runtime.name == name and runtime.description
    assert runtime.form.export in EXPORT_FORMS and runtime.form.precision in PRECISIONS
    reason = runtime.available()
    if reason:
        assert isinstance(reason, str) and reason
        with pytest.raises(EdgeqError, match=name):
            runtime.require()
        pytest.skip(f"{name}: {reason}")
    if runtime.form.export != "onnx":
        pytest.skip(f"{name} runs {runtime.form.export} artifacts; the tiny fixture is ONNX")
    fingerprint = runtime.fingerprint()
    assert fingerprint["runtime"] == name and fingerprint["cpu_count"] and "isa" in fingerprint
    session = runtime.open(tiny_onnx["int8"]["path"], batch=2, threads=1)
    assert isinstance(session, Session) and session.input_info and session.feeds[0].shape[0] == 2
    times = session.time(5)
    assert len(times) == 5 and all(t > 0 for t in times)
    x = np.load(calib_npy)[:10]
    evaluated = runtime.open(tiny_onnx["int8"]["path"], batch=None, threads=1).run(x)[0]
    reference = get_runtime("ort").open(tiny_onnx["int8"]["path"], batch=None).run(x)[0]
    assert evaluated.shape == reference.shape
    cosine = float((evaluated * reference).sum() / np.linalg.norm(evaluated) / np.linalg.norm(reference))
    assert cosine > 0.999


def test_every_shipped_target_loads_and_aliases_resolve():
    found = shipped()
    assert set(SHIPPED) <= set(found)
    for target in found.values():
        assert target.runtime in runtimes() and target.batch_sizes and target.reach in ("local", "ssh", "none")
    assert get_target("ort-cpu").name == "x86-cpu-ort" == DEFAULT_TARGET
    assert get_target("openvino-cpu").runtime == "openvino"
    assert get_target("rpi4-ort").threads == 4 and "SSH" in get_target("rpi4-ort").unavailable()


@pytest.mark.parametrize("text, field", [
    ("name: t\ndescription: d\nruntime: nope\nartifact: {form: onnx, precision: int8}\nbatch_sizes: [1]\nreach: local\n",
     "'runtime'"),
    ("name: t\ndescription: d\nruntime: ort\nartifact: {form: onnx, precision: int8}\nbatch_sizes: [0]\nreach: local\n",
     "'batch_sizes'"),
    ("name: t\ndescription: d\nruntime: ort\nartifact: {form: coreml, precision: int8}\nbatch_sizes: [1]\nreach: local\n",
     "'artifact'"),
    ("name: t\nruntime: ort\nartifact: {form: onnx, precision: int8}\nbatch_sizes: [1]\nreach: local\n",
     "'description'"),
    ("name: t\ndescription: d\nruntime: ort\nartifact: {form: onnx, precision: int8}\nbatch_sizes: [1]\nreach: local\n"
     "threads: two\n", "'threads'"),
    ("name: t\ndescription: d\nruntime: ort\nartifact: {form: onnx, precision: int8}\nbatch_sizes: [1]\nreach: moon\n",
     "'reach'"),
])
def test_a_broken_target_file_names_file_and_field(tmp_path, text, field):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(EdgeqError) as err:
        read_target(path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_measurement_schema_and_the_unreachable_target(tiny_onnx, tmp_path):
    result = api.profile(tiny_onnx["int8"]["path"], runs=12, warmup=2, batch=4, target="x86-cpu-ort")
    assert result["schema"] == SCHEMA and result["measured"] and result["target"]["name"] == "x86-cpu-ort"
    (b,) = result["batches"]
    assert b["batch"] == 4 and 0 < b["p50_ms"] <= b["p90_ms"] <= b["p99_ms"] and len(b["samples_ms"]) == 12
    assert b["load_seconds"] > 0 and b["peak_rss_mb"] > 0 and result["bytes"] > 0
    round_trip = json.loads(json.dumps(result))
    assert round_trip == result
    far = api.profile(tiny_onnx["int8"]["path"], runs=5, target="rpi4-ort")
    assert far["measured"] is False and "SSH" in far["not_measured"] and "batches" not in far
    ov = api.profile(tiny_onnx["int8"]["path"], runs=5, batch=1, target="x86-cpu-openvino")
    assert ov["measured"] and ov["fingerprint"]["runtime"] == "openvino" and ov["fingerprint"]["openvino"]


def test_an_artifact_form_the_target_does_not_run(tiny_onnx):
    with pytest.raises(EdgeqError, match="runs coreml"):
        api.profile(tiny_onnx["int8"]["path"], runs=5, target="apple-m-coreml")
    with pytest.raises(EdgeqError, match="unknown target"):
        api.profile(tiny_onnx["int8"]["path"], runs=5, target="nowhere")
