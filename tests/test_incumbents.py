"""The incumbents the bench holds edgeq against: ONNX Runtime's quantize_static and NNCF (ONNX and OpenVINO
backends), made from edgeq's own FP32 ONNX and run by the real runtimes."""
import numpy as np
import onnx
import pytest

from edgeq.baselines import nncf_quantize, ort_minmax
from edgeq.envinfo import int8_dot_saturates
from edgeq.metrics import compare
from edgeq.runtimes import ort as ort_cpu
from edgeq.runtimes.feeds import example_shapes
from edgeq.samples import Samples

pytest.importorskip("nncf")
ov = pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def calib(calib_npy):
    return Samples((np.load(calib_npy)[:16],))


def fp32_outputs(tiny_onnx, x):
    return ort_cpu.run(ort_cpu.session(tiny_onnx["fp32"]["path"]), Samples((x,)))[0]


def test_nncf_onnx_backend_writes_a_qdq_file_close_to_fp32(tiny_onnx, calib, labelled_npz, tmp_path):
    seconds = nncf_quantize("nncf", tiny_onnx["fp32"]["path"], tmp_path / "nncf.onnx", calib)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "nncf.onnx")).graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 3 and seconds > 0
    x = np.load(labelled_npz)["x"]
    ours = ort_cpu.run(ort_cpu.session(tmp_path / "nncf.onnx"), Samples((x,)))[0]
    assert compare(fp32_outputs(tiny_onnx, x), ours)["cosine"] > 0.99


@pytest.mark.parametrize("variant", ["nncf-ov", "nncf-ov-transformer"])
def test_nncf_openvino_backend_writes_an_int8_ir_with_fp32_weights(variant, tiny_onnx, calib, labelled_npz, tmp_path):
    from edgeq.runtimes.openvino import OpenvinoSession
    nncf_quantize(variant, tiny_onnx["fp32"]["path"], tmp_path / f"{variant}.xml", calib)
    model = ov.Core().read_model(str(tmp_path / f"{variant}.xml"))
    types = [op.get_type_name() for op in model.get_ops()]
    constants = [op.get_output_element_type(0) for op in model.get_ops() if op.get_type_name() == "Constant"]
    assert types.count("FakeQuantize") >= 3 and ov.Type.f16 not in constants   # FP32 weights kept, not fp16
    # symbolic axes are timed at edgeq's export shape, as for its ONNX files (not at size 1)
    assert example_shapes(tmp_path / f"{variant}.xml") == example_shapes(tiny_onnx["fp32"]["path"]) is not None
    x = np.load(labelled_npz)["x"]
    ours = OpenvinoSession(tmp_path / f"{variant}.xml", batch=None).run(Samples((x,)))[0]
    # On x86 without VNNI NNCF's default IR saturates int16 pair sums in OpenVINO's u8×s8 kernels (its overflow
    # fix narrows only the first layer's weights): cosine 0.856 on an AVX2 EPYC. That is the incumbent as
    # users get it there, not this harness, so only a floor is asserted on such CPUs.
    floor = 0.7 if variant == "nncf-ov" and int8_dot_saturates() else 0.99
    assert compare(fp32_outputs(tiny_onnx, x), ours)["cosine"] > floor


def test_ort_minmax_writes_a_qdq_file_close_to_fp32(tmp_path, tiny_onnx, calib, labelled_npz):
    seconds = ort_minmax(tiny_onnx["fp32"]["path"], tmp_path / "ort.onnx", calib)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "ort.onnx")).graph.node]
    assert seconds > 0 and ops.count("QuantizeLinear") >= 3
    x = np.load(labelled_npz)["x"]
    ours = ort_cpu.run(ort_cpu.session(tmp_path / "ort.onnx"), Samples((x,)))[0]
    assert compare(fp32_outputs(tiny_onnx, x), ours)["cosine"] > 0.99
