"""bench.md's placement check: a searched placement is held against FP32 and all-int8 from the bench's rotation."""
from edgeq.bench import _placement_check


def _row(variant: str, runtime: str, speedup: float, interval=None, float_units=None) -> dict:
    return {"suite": "speed", "model": "m", "variant": variant, "runtime": runtime,
            "speedup_vs_runtime_fp32": speedup, "speedup_interval": interval, "float_units": float_units,
            "units": 10}


def test_a_placement_slower_than_all_int8_beyond_its_interval_is_flagged():
    rows = [_row("w8a8-fast", "ort", 1.38, [1.30, 1.45], 0), _row("w8a8", "ort", 0.97, [0.90, 1.04], 10),
            _row("w8a8-fast", "openvino", 1.50, [1.40, 1.60], 0), _row("w8a8", "openvino", 1.49, [1.40, 1.58], 0)]
    lines = {line.split(" | ")[1]: line for line in _placement_check(rows) if line.startswith("| m |")}
    assert lines["ort"].endswith("| no: 1.33x slower than the faster alternative at best |")
    assert "| 10/10 |" in lines["ort"]
    assert lines["openvino"].endswith("| yes |")


def test_an_all_float_placement_holds_up_where_int8_is_slower():
    rows = [_row("w8a8-fast", "ort", 0.6, [0.55, 0.65], 0), _row("w8a8", "ort", 1.0, [0.97, 1.03], 10)]
    assert _placement_check(rows)[-2].endswith("| yes |")
    drift = [_row("w8a8-fast", "ort", 0.4, [0.35, 0.45], 0), _row("w8a8", "ort", 0.94, [0.89, 0.98], 10)]
    assert _placement_check(drift)[-2].endswith("| yes |")   # the FP32 graph timed against the FP32 file
    assert _placement_check([_row("w8a8", "ort", 1.0, [0.97, 1.03], 10)]) == []   # nothing to compare with


def _matmul_chain(path, size: int, depth: int):
    """An ONNX file of ``depth`` chained size×size MatMuls: its cost grows with both."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    weights = [numpy_helper.from_array(np.eye(size, dtype=np.float32), f"w{i}") for i in range(depth)]
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"y{i - 1}", f"w{i}"], [f"y{i}"]) for i in range(depth)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, size])],
                              [helper.make_tensor_value_info(f"y{depth - 1}", onnx.TensorProto.FLOAT, [1, size])],
                              weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_the_head_to_head_races_the_chosen_artifact_against_the_fastest_incumbent(tmp_path):
    """Real ONNX Runtime sessions: edgeq's artifact and the fast incumbent are the same graph (level), the other
    incumbent does over 100x the work; the unsearched recipe's artifact does not race."""
    from edgeq.bench import _head_to_head
    from edgeq.report.build import Built, Variant
    from edgeq.target import get_target
    t = get_target("x86-cpu-ort")
    files = {name: _matmul_chain(tmp_path / f"{name}.onnx", size, depth)
             for name, size, depth in [("fp32", 256, 8), ("fast", 64, 2), ("slow", 256, 40), ("mine", 64, 2),
                                       ("other", 256, 40)]}
    variants = [Variant("fp32", "float", {t.name: Built(files["fp32"])}),
                Variant("fast", "baseline", {t.name: Built(files["fast"])}),
                Variant("slow", "baseline", {t.name: Built(files["slow"])}),
                Variant("w8a8-fast", "edgeq", {t.name: Built(files["other"])}),
                Variant("w8a8", "edgeq", {t.name: Built(files["mine"])})]
    result = _head_to_head(variants, [t], "w8a8", runs=60)
    h = result[("w8a8", t.name)]
    assert set(h["incumbents"]) == {"fast", "slow"} and h["fastest_incumbent"] == "fast"
    assert h["speedup_vs_runtime_fp32"] > 1.5 and h["incumbents"]["slow"] < 1
    low, high = h["vs_fastest_incumbent_interval"]
    assert low <= h["vs_fastest_incumbent"] <= high and 0.7 < h["vs_fastest_incumbent"] < 1.4
    assert h["runs"] == 60


def test_the_incumbent_check_holds_edgeq_at_parity_or_ahead():
    from edgeq.bench import _incumbent_check

    def row(model: str, ratio: float) -> dict:
        return {"suite": "speed", "model": model, "variant": "w8a8", "runtime": "openvino",
                "head_to_head": {"runs": 1000, "speedup_vs_runtime_fp32": 2.0, "speedup_interval": [1.95, 2.05],
                                 "incumbents": {"nncf-ov": 2.0 / ratio}, "fastest_incumbent": "nncf-ov",
                                 "vs_fastest_incumbent": ratio,
                                 "vs_fastest_incumbent_interval": [ratio - 0.02, ratio + 0.02]}}
    lines = {line.split(" | ")[0][2:]: line for line in _incumbent_check([row("a", 0.985), row("b", 0.95)])
             if line.startswith("| a |") or line.startswith("| b |")}
    assert lines["a"].endswith("| yes |") and "0.985 (0.965–1.005)" in lines["a"]
    assert lines["b"].endswith("| no |")
    assert "1000 runs each" in "\n".join(_incumbent_check([row("a", 1.0)]))
    assert _incumbent_check([{"suite": "speed", "model": "a", "variant": "w8a8", "runtime": "ort"}]) == []
