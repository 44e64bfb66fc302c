"""Bad input: one clear sentence, exit code 2, and no output left behind."""
import os
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgeq.cli import main


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def assert_clean_error(code, output, fragment, out_dir=None):
    assert code == 2, output
    lines = [line for line in output.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], output
    assert "Traceback" not in output
    if out_dir is not None:
        leftovers = [p for p in os.listdir(out_dir) if p not in ("calib.npy",)]
        assert leftovers == [] or all(not p.startswith((".", "out")) for p in leftovers), leftovers


@pytest.fixture
def workdir(tmp_path, calib_npy):
    shutil.copy(calib_npy, tmp_path / "calib.npy")
    return tmp_path


def quantize(workdir, *extra, model=None, calib=None):
    model = model or f"{os.path.dirname(__file__)}/tiny_models.py:tiny_hybrid"
    return run("quantize", "--model", model, "--calib", calib or workdir / "calib.npy",
               "-o", workdir / "out.edgeq", *extra)


def test_unknown_model_spec(workdir):
    assert_clean_error(*quantize(workdir, model="resnet50"), "unknown model spec", workdir)
    assert_clean_error(*quantize(workdir, model="zoo:nope"), "unknown zoo model", workdir)
    assert_clean_error(*quantize(workdir, model="timm:not_a_model_xyz"), "unknown timm model", workdir)
    assert_clean_error(*quantize(workdir, model="tests.tiny_models:not_a_module"), "not a torch.nn.Module",
                       workdir)


def test_checkpoint_that_does_not_match(workdir):
    torch.save({"conv.weight": torch.zeros(3, 3)}, workdir / "bad.pt")
    code, out = quantize(workdir, "--weights", workdir / "bad.pt")
    assert_clean_error(code, out, "does not match", workdir)


def test_corrupt_and_truncated_checkpoint(workdir):
    from tests.tiny_models import tiny_hybrid
    good = workdir / "good.pt"
    torch.save(tiny_hybrid().state_dict(), good)
    (workdir / "trunc.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (workdir / "garbage.pt").write_bytes(b"not a checkpoint at all")
    for name in ("trunc.pt", "garbage.pt"):
        assert_clean_error(*quantize(workdir, "--weights", workdir / name), "corrupt or truncated", workdir)
    code, out = quantize(workdir, "--weights", good, "--recipe", "w8a8-fast")  # the intact file works
    assert code == 0, out


def test_wrong_input_shape(workdir):
    assert_clean_error(*quantize(workdir, "--input-shape", "1x5x32x32"), "does not accept inputs", workdir)
    assert_clean_error(*quantize(workdir, "--input-shape", "one-by-three"), "must look like", workdir)


def test_empty_calibration_folder(workdir):
    (workdir / "empty").mkdir()
    assert_clean_error(*quantize(workdir, calib=workdir / "empty"), "contains no images", workdir)


def test_calibration_with_nan(workdir):
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    x[3, 0, 0, 0] = np.nan
    np.save(workdir / "nan.npy", x)
    assert_clean_error(*quantize(workdir, calib=workdir / "nan.npy"), "NaN/Inf", workdir)


def test_calibration_with_wrong_layout(workdir):
    np.save(workdir / "nhwc.npy", np.zeros((4, 32, 32, 3), np.float32))
    assert_clean_error(*quantize(workdir, calib=workdir / "nhwc.npy"), "samples shaped", workdir)


def test_unwritable_output(workdir):
    code, out = run("quantize", "--model", "tests/tiny_models.py:tiny_hybrid", "--calib",
                    workdir / "calib.npy", "-o", workdir / "missing-dir" / "out.edgeq")
    assert_clean_error(code, out, "does not exist")
    locked = workdir / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        # root may write anywhere on disk, so use a folder no one can create files in instead
        target = locked if not os.access(locked, os.W_OK) else "/proc"
        code, out = run("quantize", "--model", "tests/tiny_models.py:tiny_hybrid", "--calib",
                        workdir / "calib.npy", "-o", f"{target}/out.edgeq")
        assert_clean_error(code, out, "writ")
    finally:
        locked.chmod(0o700)


def test_existing_output_needs_force(workdir):
    (workdir / "out.edgeq").mkdir()
    (workdir / "out.edgeq" / "keep.txt").write_text("user data")
    assert_clean_error(*quantize(workdir), "already exists")
    assert (workdir / "out.edgeq" / "keep.txt").read_text() == "user data"


def test_unknown_and_malformed_recipe(workdir):
    assert_clean_error(*quantize(workdir, "--recipe", "w3a3-magic"), "unknown recipe", workdir)
    (workdir / "bad.yaml").write_text("edgeq_recipe: 1\nweights: {bits: 8, colour: blue}\n")
    assert_clean_error(*quantize(workdir, "--recipe", workdir / "bad.yaml"), "unknown key 'colour'", workdir)
    (workdir / "broken.yaml").write_text("edgeq_recipe: [1\n")
    assert_clean_error(*quantize(workdir, "--recipe", workdir / "broken.yaml"), "not valid YAML", workdir)
    (workdir / "future.json").write_text('{"edgeq_recipe": 99}')
    assert_clean_error(*quantize(workdir, "--recipe", workdir / "future.json"), "edgeq_recipe must be 1",
                       workdir)


def test_fake_pt2_and_npz(workdir):
    (workdir / "fake.pt2").write_bytes(b"PK\x03\x04 this is not a program")
    assert_clean_error(*quantize(workdir, model=workdir / "fake.pt2"), "not a saved torch.export program",
                       workdir)
    (workdir / "fake.npz").write_bytes(b"definitely not a zip")
    assert_clean_error(*quantize(workdir, calib=workdir / "fake.npz"), "not a readable .npz", workdir)
    np.savez(workdir / "two.npz", a=np.zeros((2, 3, 32, 32), np.float32), b=np.zeros(2))
    assert_clean_error(*quantize(workdir, calib=workdir / "two.npz"), "pick one with", workdir)
    assert_clean_error(*quantize(workdir, calib=f"{workdir / 'two.npz'}:zz"), "has no array 'zz'", workdir)


def test_export_errors(workdir, tiny_bundle):
    assert_clean_error(*run("export", workdir, "-o", workdir / "m.onnx"), "not an edgeq bundle", workdir)
    assert_clean_error(*run("export", tiny_bundle, "--to", "tflite", "-o", workdir / "m.onnx"),
                       "unknown export target", workdir)
    assert_clean_error(*run("export", tiny_bundle, "--opset", "13", "-o", workdir / "m.onnx"),
                       "at least 17", workdir)


def test_export_refuses_newer_bundle(workdir, tiny_bundle):
    import json
    copy = workdir / "future.edgeq"
    shutil.copytree(tiny_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert_clean_error(*run("export", copy, "-o", workdir / "m.onnx"), "newer than this edgeq", workdir)
    assert not (workdir / "m.onnx").exists()


def test_eval_and_profile_errors(workdir, tiny_onnx):
    assert_clean_error(*run("eval", workdir / "none.onnx"), "does not exist")
    np.save(workdir / "small.npy", np.zeros((2, 3, 16, 16), np.float32))
    assert_clean_error(*run("eval", tiny_onnx["int8"]["path"], "--data", workdir / "small.npy"),
                       "samples shaped")
    assert_clean_error(*run("profile", tiny_onnx["int8"]["path"], "--runs", "0"), "must be positive")


def test_json_mode_reports_error(workdir):
    code, out = quantize(workdir, "--json", model="zoo:nope")
    assert code == 2 and '"error"' in out


def test_output_kind_mismatch_never_replaces(workdir, tiny_bundle):
    (workdir / "afile").write_text("user data")
    code, out = run(
        "quantize", "--model", "tests/tiny_models.py:tiny_hybrid", "--calib", workdir / "calib.npy",
        "-o", workdir / "afile", "--force")
    assert_clean_error(code, out, "existing file")
    assert (workdir / "afile").read_text() == "user data"
    (workdir / "adir").mkdir()
    (workdir / "adir" / "keep.txt").write_text("x")
    assert_clean_error(*run("export", tiny_bundle, "-o", workdir / "adir", "--force"), "existing folder")
    assert (workdir / "adir" / "keep.txt").exists()


def test_reconstruction_bad_knobs(workdir):
    for bad in (["--iters", "0"], ["--iters", "-5"], ["--drop-prob", "1.5"]):
        assert_clean_error(*quantize(workdir, *bad), "command line", workdir)
    assert_clean_error(*quantize(workdir, "--batch-size", "64"), "fewer than one reconstruction batch", workdir)
    assert_clean_error(*quantize(workdir, "--recipe", "w8a8-fast", "--iters", "10"),
                       "does not use block reconstruction", workdir)
    (workdir / "w9.yaml").write_text("edgeq_recipe: 1\nweights: {bits: 9}\n")
    assert_clean_error(*quantize(workdir, "--recipe", workdir / "w9.yaml"), "bits must be an integer from 2 to 8",
                       workdir)
    (workdir / "obj.yaml").write_text("edgeq_recipe: 1\nreconstruction: {objective: hessian}\n")
    assert_clean_error(*quantize(workdir, "--recipe", workdir / "obj.yaml"), "objective must be one of", workdir)
    assert not (workdir / "out.edgeq.resume").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_request_without_cuda(workdir):
    assert_clean_error(*quantize(workdir, "--device", "cuda"), "no usable CUDA device", workdir)
    assert_clean_error(*quantize(workdir, "--device", "tpu"), "--device must be cpu or cuda", workdir)


def test_interrupted_run_needs_resume_or_force(workdir):
    (workdir / "out.edgeq.resume").mkdir()
    (workdir / "out.edgeq.resume" / "state.pt").write_bytes(b"not a state")
    assert_clean_error(*quantize(workdir), "pass --resume to continue it or --force")
    assert_clean_error(*quantize(workdir, "--resume"), "unreadable")
    assert (workdir / "out.edgeq.resume" / "state.pt").read_bytes() == b"not a state"
    assert not (workdir / "out.edgeq").exists()


@pytest.mark.parametrize("extra, fragment", [
    (("--time-budget", "-1"), "--time-budget is in seconds and cannot be negative"),
    (("--time-budget", "10", "--recipe", "w8a8-fast"), "--time-budget do not apply"),
])
def test_bad_time_budget(workdir, extra, fragment):
    assert_clean_error(*quantize(workdir, *extra), fragment, workdir)


def test_report_bad_input(workdir):
    model = f"{os.path.dirname(__file__)}/tiny_models.py:tiny_hybrid"
    out = workdir / "out-report"
    for args, fragment in (
            (("--targets", "x86-cpu-ort,nope"), "unknown target 'nope'"),
            (("--runs", "0"), "--runs must be positive"),
            (("--recipes", "w9a9"), "w9a9"),
            (("--recipes", ""), "give at least one recipe"),
            (("--targets", str(workdir / "missing.yaml")), "does not exist"),
            (("--data", str(workdir / "missing.npz")), "evaluation data")):
        code, output = run("report", model, "--calib", workdir / "calib.npy", "-o", out, *args)
        assert_clean_error(code, output, fragment, workdir)
        assert not out.exists()


def test_report_from_another_schema_is_refused(tmp_path):
    import json

    from edgeq.report import ReportError, read_report
    (tmp_path / "report.json").write_text(json.dumps({"schema": "edgeq.report/0", "rows": []}))
    with pytest.raises(ReportError, match="is edgeq.report/0; this edgeq reads edgeq.report/1"):
        read_report(tmp_path)


def test_a_failed_bench_keeps_the_work_folder_only_when_it_holds_a_learned_model(tmp_path):
    """A quantization that fails after learning names its ``*.learned.edgeq`` in the error; the bench's work
    folder holding it must survive the bench (anything else is removed)."""
    from edgeq.bench import _keep_if_it_holds_learned_work
    holding, plain = tmp_path / "edgeq-bench-a", tmp_path / "edgeq-bench-b"
    learned = holding / "speed-m" / "w8a8.learned.edgeq"
    learned.mkdir(parents=True)
    (learned / "manifest.json").write_text("{}")
    (plain / "speed-m" / "w8a8.edgeq").mkdir(parents=True)
    _keep_if_it_holds_learned_work(holding)
    _keep_if_it_holds_learned_work(plain)
    assert (learned / "manifest.json").exists() and not plain.exists()
