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
