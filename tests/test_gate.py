"""The CI gate: its statistics on synthetic samples, both modes end to end on a zoo artifact (real ONNX Runtime
sessions), the summary, exit codes and bad input."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeq.gate.evidence import slowed_copy
from edgeq.gate.interleaved import MAX_ROUNDS, MIN_REGRESSION_ROUNDS, MIN_ROUNDS
from edgeq.gate.stats import RoundInterval, decide, mann_whitney_slower, min_samples, round_interval, sequential


def _gate(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeq.cli", "gate", *map(str, args)], capture_output=True,
                          text=True, timeout=600)


# --- statistics -----------------------------------------------------------------------------------------

def _decisions(shift: float, spread: float, trials: int = 2000) -> list[str]:
    """The gate's stopping rule on synthetic rounds whose log-ratios spread ``spread`` around ``shift``."""
    rng = np.random.default_rng(0)
    return [sequential(lambda: float(np.exp(rng.normal(np.log(shift), spread))), 0.05, MIN_ROUNDS, MAX_ROUNDS,
                       MIN_REGRESSION_ROUNDS)[1] for _ in range(trials)]


def test_stopping_rule_finds_known_shifts_and_passes_identical_ones():
    # round-to-round spreads of 3 % and 6 % (what these shared machines show at one thread)
    for spread in (0.03, 0.06):
        same, ten, three = (_decisions(s, spread) for s in (1.0, 1.10, 1.03))
        assert same.count("regression") / len(same) <= 0.01 and same.count("pass") / len(same) >= 0.95
        assert ten.count("regression") / len(ten) >= 0.95
        assert three.count("regression") / len(three) <= 0.01
    # a regression is never called before MIN_REGRESSION_ROUNDS, however clear; a pass may stop at MIN_ROUNDS
    ratios, decision = sequential(lambda: 1.5, 0.05, MIN_ROUNDS, MAX_ROUNDS, MIN_REGRESSION_ROUNDS)
    assert decision == "regression" and len(ratios) == MIN_REGRESSION_ROUNDS
    one = round_interval([1.2])
    assert one.rounds == 1 and decide(one, 0.05) is None   # one round decides nothing


def test_interval_fast_end_is_the_stricter_bound():
    i = round_interval([1.03, 1.05, 1.0, 1.02, 1.04])
    assert i.ratio - i.low > i.high - i.ratio > 0     # 99 % one-sided below, 95 % above


def test_decide_reads_the_interval_ends():
    assert decide(RoundInterval(1.2, 1.08, 1.3, 5), 0.05) == "regression"
    assert decide(RoundInterval(1.0, 0.97, 1.04, 5), 0.05) == "pass"
    assert decide(RoundInterval(1.05, 1.01, 1.09, 5), 0.05) is None


def test_mann_whitney_on_synthetic_samples():
    rng = np.random.default_rng(1)
    base = list(rng.gamma(20, 0.1, 200))
    slower = [v * 1.2 for v in rng.gamma(20, 0.1, 200)]
    assert mann_whitney_slower(base, slower).p_value < 1e-6
    assert mann_whitney_slower(base, slower).ratio == pytest.approx(1.2, abs=0.06)
    same = [mann_whitney_slower(list(rng.gamma(20, 0.1, 100)), list(rng.gamma(20, 0.1, 100))).p_value
            for _ in range(300)]
    assert sum(p < 0.002 for p in same) <= 3      # about 0.2 % of identical pairs
    faster = mann_whitney_slower(base, [v * 0.8 for v in base])
    assert faster.p_value > 0.5                   # one-sided: a speed-up is never a regression
    assert min_samples(0.002) == 6 and min_samples(0.05) == 4   # 1/C(6,3) is exactly 0.05


# --- end to end on a zoo artifact -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def zoo_artifacts(tmp_path_factory):
    from edgeq import api
    folder = tmp_path_factory.mktemp("gate")
    bundle = folder / "mobilevit.edgeq"
    api.quantize("zoo:mobilevit_xxs", "zoo", "w8a8-fast", bundle, calib_size=64)
    base = folder / "base.onnx"
    api.export(bundle, "onnx", base, precision="int8")
    same = folder / "same.onnx"
    for suffix in ("", ".json"):
        shutil.copy(f"{base}{suffix}", f"{same}{suffix}")
    slow = slowed_copy(base, folder / "slow.onnx", 400)   # far beyond 5 %: decided in a few rounds
    shutil.copy(f"{base}.json", f"{slow}.json")
    return {"bundle": bundle, "base": base, "same": same, "slow": slow, "folder": folder}


def test_interleaved_identical_copy_passes_and_slowed_copy_fails(zoo_artifacts, tmp_path):
    a = zoo_artifacts
    ok = _gate("--baseline", a["base"], "--current", a["same"], "--json", "--threads", "1")  # as reports/gate.md
    assert ok.returncode == 0, ok.stderr
    result = json.loads(ok.stdout)
    assert result["passed"] and result["mode"] == "interleaved"
    assert {f["metric"] for f in result["findings"]} == {"latency_p50_ms", "bytes"}
    latency = next(f for f in result["findings"] if f["metric"] == "latency_p50_ms")
    assert latency["variant"] == "w8a8-fast" and latency["target"] == "x86-cpu-ort"
    assert "interleaved rounds" in latency["statistic"]

    summary = tmp_path / "gate.md"
    bad = _gate("--baseline", a["base"], "--current", a["slow"], "--summary", summary)
    assert bad.returncode == 1, bad.stderr
    text = summary.read_text()
    assert text.startswith("## edgeq gate: 2 regressions")   # the extra work's weights grew the file too
    assert "| ❌ regression | w8a8-fast | x86-cpu-ort | latency_p50_ms |" in text
    assert "| ❌ regression | w8a8-fast | x86-cpu-ort | bytes |" in text
    assert "accuracy not checked (no --max-drop)" in text


def test_a_bundle_is_exported_for_the_target_and_compared(zoo_artifacts):
    done = _gate("--baseline", zoo_artifacts["bundle"], "--current", zoo_artifacts["base"], "--json",
                 "--max-drop", "0.5", "--data", "zoo:test", "--eval-limit", "2000", "--threads", "1",
                 "--max-slowdown", "0.2")
    assert done.returncode == 0, done.stderr
    findings = {f["metric"]: f for f in json.loads(done.stdout)["findings"]}
    assert findings["accuracy (top1)"]["baseline"] == findings["accuracy (top1)"]["current"]
    assert findings["accuracy (top1)"]["statistic"].endswith("on 2000 samples of zoo:test")   # --eval-limit


@pytest.fixture(scope="module")
def zoo_report(zoo_artifacts):
    from edgeq.report import ReportSpec, make_report
    out = zoo_artifacts["folder"] / "report"
    make_report(ReportSpec(str(zoo_artifacts["bundle"]), ("x86-cpu-ort",), (), "zoo", "zoo:test", runs=30,
                           eval_limit=300, incumbents=False), out, keep_artifacts=True)   # as scripts/ci_gate.sh
    return out


def _edited_report(src: Path, dst: Path, edit) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    report = json.loads((src / "report.json").read_text())
    edit(report)
    (dst / "report.json").write_text(json.dumps(report))
    return dst / "report.json"


def test_report_mode_tests_stored_samples(zoo_report, tmp_path):
    same = _gate("--baseline", zoo_report / "report.json", "--current", zoo_report / "report.json", "--json")
    assert same.returncode == 0, same.stderr
    result = json.loads(same.stdout)
    assert result["mode"] == "report" and "weaker than interleaved" in result["notes"][0]
    variants = {f["variant"] for f in result["findings"]}
    assert variants == {"fp32", "fp16", "w8a8-fast"}   # --no-incumbents: no ORT/NNCF rows built or compared
    assert "not run: --no-incumbents" in (zoo_report / "report.md").read_text()   # and the report says so

    def slower_int8(report):
        for row in report["rows"]:
            if row["variant"] == "fp32" and row["measured"]:
                row["latency"]["samples_ms"] = [v * 2 for v in row["latency"]["samples_ms"]]
                row["score"] = row["score"] - 2.0
    slow = _edited_report(zoo_report, tmp_path / "slow", slower_int8)
    summary = tmp_path / "s.md"
    failed = _gate("--baseline", zoo_report / "report.json", "--current", slow, "--max-drop", "1",
                   "--summary", summary)
    assert failed.returncode == 1, failed.stderr
    text = summary.read_text()
    assert "## edgeq gate: 2 regressions" in text and "Mann-Whitney U one-sided p = " in text
    fp32 = next(r for r in json.loads((zoo_report / "report.json").read_text())["rows"] if r["variant"] == "fp32")
    assert (f"| ❌ regression | fp32 | x86-cpu-ort | accuracy (top1) | {fp32['score']:.4g} | "
            f"{fp32['score'] - 2:.4g} | -2 pp | drop 2pp (limit 1pp) |") in text


def test_interleaved_mode_on_reports_with_kept_artifacts(zoo_report):
    done = _gate("--baseline", zoo_report, "--current", zoo_report, "--mode", "interleaved", "--variant", "fp32",
                 "--json", "--threads", "1", "--max-slowdown", "0.2")   # (a CI flake costs more than this checks)
    assert done.returncode == 0, done.stderr
    findings = json.loads(done.stdout)["findings"]
    assert [f["variant"] for f in findings] == ["fp32", "fp32"] and "interleaved" in findings[0]["statistic"]


def test_bad_input_is_one_sentence_and_exit_2(zoo_artifacts, zoo_report, tmp_path):
    base = zoo_artifacts["base"]
    other = tmp_path / "other.onnx"
    shutil.copy(base, other)
    record = json.loads(Path(f"{base}.json").read_text())
    (tmp_path / "other.onnx.json").write_text(json.dumps({**record, "model": "zoo:levit_128s"}))
    old = _edited_report(zoo_report, tmp_path / "old", lambda r: r.update(schema="edgeq.report/0"))
    one_sided = _edited_report(zoo_report, tmp_path / "one", lambda r: r.update(
        rows=[row for row in r["rows"] if row["variant"] != "fp16"]))

    def few(report):
        for row in report["rows"]:
            if row["measured"]:
                row["latency"].update(runs=4, samples_ms=row["latency"]["samples_ms"][:4])
    too_few = _edited_report(zoo_report, tmp_path / "few", few)
    other_target = _edited_report(zoo_report, tmp_path / "target", lambda r: [
        row.update(target="x86-cpu-openvino") for row in r["rows"]])
    other_cpu = _edited_report(zoo_report, tmp_path / "cpu", lambda r: r["env"]["machine"].update(
        processor="Some Other CPU"))
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    summary = tmp_path / "summary.md"
    cases = [
        ((base, other), "differ in model (zoo:mobilevit_xxs vs zoo:levit_128s)"),
        ((zoo_report / "report.json", old), "edgeq.report/0; this edgeq reads edgeq.report/1"),
        ((zoo_report / "report.json", one_sided), "variant fp16 on x86-cpu-ort is in the baseline side only"),
        ((zoo_report / "report.json", other_target), "differ in target (x86-cpu-ort vs x86-cpu-openvino)"),
        ((zoo_report / "report.json", other_cpu), "timed on different CPUs"),
        ((zoo_report / "report.json", too_few), "needs at least 6 per side"),
        ((garbage, zoo_report / "report.json"), "is not a JSON report"),
        ((base, zoo_report / "report.json"), "one side is a report.json and the other an artifact"),
        ((base, tmp_path / "missing.onnx"), "does not exist"),
    ]
    for (a, b), message in cases:
        done = _gate("--baseline", a, "--current", b, "--summary", summary)
        assert done.returncode == 2, (message, done.stdout, done.stderr)
        assert message in done.stderr and done.stderr.count("\n") == 1, done.stderr
        assert not summary.exists()
    done = _gate("--baseline", base, "--current", base, "--max-drop", "1", "--data", "zoo:test", "--eval-limit", "0")
    assert done.returncode == 2 and "--eval-limit must be positive (got 0)." in done.stderr, done.stderr
