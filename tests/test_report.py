"""The latency-accuracy report: a real small run on both CPU runtimes, the schema, and the page in a real
headless Chromium (Debian's ``chromium``; .ci/run installs it)."""
import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import TINY
from edgeq.report import ReportError, ReportSpec, make_report, read_report, validate
from edgeq.report.build import _edgeq_label
from edgeq.report.plots import pareto_front

SCREENSHOTS = Path(__file__).resolve().parent / "output"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory, calib_npy, labelled_npz):
    out = tmp_path_factory.mktemp("report") / "tiny"
    spec = ReportSpec(TINY, ("x86-cpu-ort", "x86-cpu-openvino", "rpi4-ort", "jetson-orin-trt"), ("w8a8-fast",),
                      str(calib_npy), str(labelled_npz), runs=10)
    make_report(spec, out)
    return out


def test_report_rows_on_both_cpu_runtimes(tiny_report):
    report = read_report(tiny_report / "report.json")
    rows = {(r["variant"], r["target"]): r for r in report["rows"]}
    from edgeq.baselines import NNCF_VARIANTS, nncf_missing
    incumbents = {"ort-minmax"} | (set() if nncf_missing() else set(NNCF_VARIANTS))
    assert {v["name"] for v in report["variants"]} == {"fp32", "fp16", "w8a8-fast"} | incumbents
    if not nncf_missing():   # NNCF's OpenVINO IR runs on OpenVINO only, its ONNX file on both CPU runtimes
        assert rows[("nncf-ov", "x86-cpu-openvino")]["measured"] and not rows[("nncf-ov", "x86-cpu-ort")]["measured"]
        assert all(rows[("nncf", t)]["measured"] for t in ("x86-cpu-ort", "x86-cpu-openvino"))
    for target in ("x86-cpu-ort", "x86-cpu-openvino"):
        fp32, fp16, int8 = (rows[(v, target)] for v in ("fp32", "fp16", "w8a8-fast"))
        assert all(r["measured"] for r in (fp32, fp16, int8))
        assert fp32["drop"] == 0 and fp32["speedup_vs_target_fp32"] == 1.0
        assert fp32["bytes"] > 0 and fp16["bytes"] > 0   # (this tiny model's QDQ nodes outweigh its weights)
        assert int8["cosine_vs_fp32"] > 0.95 and int8["float_units"] == 0 and int8["label"] == "w8a8-fast"
        lat = int8["latency"]
        assert lat["runs"] == len(lat["samples_ms"]) == 10 and lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
        assert {l["precision"] for l in int8["layers"]} == {"w8a8"}
    targets = {t["name"]: t for t in report["targets"]}
    assert targets["x86-cpu-ort"]["fingerprint"]["runtime"] == "ort"
    for target in ("rpi4-ort", "jetson-orin-trt"):   # rows that say why, never a number
        assert not targets[target]["measured"]
        for variant in ("fp32", "w8a8-fast"):
            row = rows[(variant, target)]
            assert not row["measured"] and row["not_measured"] and "latency" not in row and "score" not in row
    markdown = (tiny_report / "report.md").read_text()
    assert "| w8a8-fast | x86-cpu-openvino |" in markdown and "not measured: rpi4-ort is reached over SSH" in markdown


def test_an_all_float_row_says_so_in_its_name():
    assert _edgeq_label("w8a8", 72, 72).startswith("w8a8 → all float (72 of 72 units")
    assert _edgeq_label("w8a8", 12, 72) == "w8a8 (12 of 72 units float)"
    assert _edgeq_label("w8a8", 0, 72) == "w8a8"


def test_pareto_front():
    points = [(1.0, 90.0), (2.0, 91.0), (1.5, 89.0), (3.0, 91.0), (0.5, 80.0)]
    assert pareto_front(points) == [(0.5, 80.0), (1.0, 90.0), (2.0, 91.0)]
    assert pareto_front([(1.0, 5.0), (2.0, 3.0)], higher_is_better=False) == [(1.0, 5.0), (2.0, 3.0)]


def test_schema_refuses_other_versions_and_names_fields(tiny_report, tmp_path):
    report = json.loads((tiny_report / "report.json").read_text())
    other = dict(report, schema="edgeq.report/2")
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ReportError, match="is edgeq.report/2; this edgeq reads edgeq.report/1"):
        read_report(tmp_path / "other.json")
    broken = copy.deepcopy(report)
    measured = next(i for i, r in enumerate(broken["rows"]) if r["measured"])
    broken["rows"][measured]["latency"]["p50_ms"] = broken["rows"][measured]["latency"]["p99_ms"] + 1
    with pytest.raises(ReportError, match=rf"rows\[{measured}\]\.latency: percentiles out of order"):
        validate(broken)
    del broken["rows"][measured]["bytes"]
    with pytest.raises(ReportError, match=rf"rows\[{measured}\]: field 'bytes' must be an integer"):
        validate(broken)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ReportError, match="is not a JSON report"):
        read_report(tmp_path / "bad.json")


def test_a_failed_report_leaves_no_folder(tmp_path, calib_npy):
    out = tmp_path / "r"
    with pytest.raises(Exception):
        make_report(ReportSpec(TINY, ("x86-cpu-ort",), ("w8a8-fast",), str(calib_npy), str(tmp_path / "no.npz"),
                               runs=5), out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def _chromium(*args, timeout=90):
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", *args], capture_output=True, text=True, timeout=timeout)


def console_messages(page: Path) -> tuple[str, list[str]]:
    """The DOM after the page's script ran, and every message the page wrote to the browser console."""
    proc = _chromium("--dump-dom", page.resolve().as_uri())
    return proc.stdout, [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


def test_report_page_in_headless_chromium(tiny_report, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("EDGEQ_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is required here (EDGEQ_REQUIRE_CHROMIUM) and not installed")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    broken = tmp_path / "broken.html"   # the check itself can fail: a page with a script error is caught
    broken.write_text("<html><body><script>noSuchFunction();</script></body></html>")
    assert any("noSuchFunction" in m for m in console_messages(broken)[1])

    page = tiny_report / "report.html"
    dom, messages = console_messages(page)
    assert messages == []
    assert 'data-ready="yes"' in dom   # the page's script ran and found its charts and table rows
    assert dom.count("<svg") >= 3 and 'id="pareto-x86-cpu-ort"' in dom and 'id="pareto-x86-cpu-openvino"' in dom
    assert '<table id="variants">' in dom and "w8a8-fast" in dom
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|@import|url\(https?:""", page.read_text())  # offline
    SCREENSHOTS.mkdir(exist_ok=True)
    shot = SCREENSHOTS / "report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,2000", page.resolve().as_uri())
    assert shot.is_file() and shot.stat().st_size > 20_000


def test_an_all_float_row_is_not_called_a_speed_up():
    """A recipe row whose every unit is float is the FP32 graph: what it measured against the FP32 file is the
    difference between two sessions of one model, so the table says so instead of printing a speed-up."""
    from edgeq.report.render import _speed_cell
    row = {"variant": "w8a8", "speedup_vs_target_fp32": 1.07, "units": 72, "float_units": 72, "within_noise": False}
    assert _speed_cell(row) == "= FP32 graph (measured 1.07x)"
    assert _speed_cell({**row, "float_units": 3}) == "1.07x"
    assert _speed_cell({**row, "float_units": 3, "within_noise": True, "speedup_interval": [0.98, 1.1]}) == \
        "≈1 (noise: 0.98–1.10x)"
