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


def test_bench_merge_keeps_rows_it_did_not_rerun(tmp_path):
    import json

    from edgeq.bench import _merge
    old = [{"suite": "zoo", "model": "m", "variant": v, "runtime": rt, "drop_pp": 0.5}
           for v in ("w8a8", "w6a6", "w4a8") for rt in ("ort", "openvino")]
    (tmp_path / "bench.json").write_text(json.dumps({"rows": old}))
    new = [{"suite": "zoo", "model": "m", "variant": "w8a8", "runtime": "ort", "drop_pp": 0.1}]
    merged = _merge(tmp_path / "bench.json", new)["rows"]
    by_key = {(r["variant"], r["runtime"]): r["drop_pp"] for r in merged}
    assert len(merged) == 6 and by_key[("w8a8", "ort")] == 0.1 and by_key[("w6a6", "openvino")] == 0.5


def test_a_recipe_file_names_its_bench_files_by_its_stem():
    """A recipe given as a file path must not place its bundle outside the work folder, where the next model of
    the run found it already there ("already exists") and stopped the bench."""
    from edgeq.bench import file_stem
    assert file_stem("/some/dir/w8a8-sym.yaml") == "w8a8-sym" and file_stem("mine.JSON") == "mine"
    assert file_stem("w8a8-fast") == "w8a8-fast"
