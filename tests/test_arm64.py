"""The runner on the Pi's architecture: scripts/arm64_proof.sh (debootstrap arm64 root, aarch64 wheels, qemu-user)
must run info, bench, compare and predict there. Slow (minutes, downloads Debian packages and wheels)."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_runner_works_on_emulated_arm64(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("debootstrap and apt-get need root")
    out = tmp_path / "arm64"
    done = subprocess.run(["bash", str(ROOT / "scripts" / "arm64_proof.sh")], capture_output=True, text=True,
                          timeout=3000, env={**os.environ, "EDGEQ_ARM64_OUT": str(out)}, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    info = json.loads((out / "info.json").read_text())
    assert info["machine"]["machine"] == "aarch64" and info["onnxruntime"]
    assert info["label"].startswith("EMULATED") and "not a Raspberry Pi" in info["label"]
    bench = json.loads((out / "bench.json").read_text())
    assert bench["schema"] == "edgeq.measurement/1" and len(bench["batches"][0]["samples_ms"]) == 20
    compare = json.loads((out / "compare.json").read_text())
    assert [len(m["samples_ms"]) for m in compare["models"]] == [20, 20]
    predicted = json.loads((out / "predict-png.json").read_text())["top"][0][0]
    assert predicted["label"] == "ankle-boot"
    assert "EMULATED" in (out / "README.md").read_text()
