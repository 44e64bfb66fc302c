"""The PTQ-time bench's report (the runs themselves are `edgeq bench --suite ptq`, minutes each)."""
import json


def test_ptq_report_merges_rows_per_model_and_variant(tmp_path):
    """A ptq-suite run of one variant replaces only that variant's rows (the others stay, with the machine)."""
    from edgeq.bench_ptq import _write_report
    row = {"ptq_seconds": 10.0, "reconstruction_seconds": 5.0, "learning_seconds": 1.0, "regions": 3, "learned": 1,
           "steps": 100, "peak_rss_mb": 900, "wall_seconds": 12.0}
    _write_report(tmp_path, [{"model": "m", "variant": "w8a8", **row}, {"model": "m", "variant": "w8a8-every-region", **row}])
    markdown = _write_report(tmp_path, [{"model": "m", "variant": "w8a8", **row, "ptq_seconds": 20.0}])
    rows = json.loads((tmp_path / "ptq.json").read_text())["rows"]
    assert [(r["variant"], r["ptq_seconds"]) for r in rows] == [("w8a8", 20.0), ("w8a8-every-region", 10.0)]
    assert "| m | w8a8 | 20.0 |" in markdown and (tmp_path / "ptq.md").read_text() == markdown
