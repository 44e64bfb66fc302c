"""SSH targets against a real OpenSSH server on 127.0.0.1 (Debian's openssh-server, a non-default port,
generated host and user keys). The device is this machine: results are labelled with the host they ran on and
a loopback target, never as a Pi."""
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import TESTS, TINY

DEPTHWISE = f"{TESTS / 'tiny_models.py'}:depthwise_heavy"

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
LOOPBACK_TARGET = """\
name: loopback-ssh
description: this machine reached over SSH on 127.0.0.1 (a test of the SSH path, not a Raspberry Pi)
runtime: ort
artifact: {form: onnx, precision: int8}
threads: 1
batch_sizes: [1]
reach: ssh
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1:PORT that lets the current user in with a generated key; the client config
    (key, known_hosts with the server's key) goes to EDGEQ_SSH_CONFIG."""
    if not Path(SSHD).exists():
        if os.environ.get("EDGEQ_REQUIRE_SSHD"):
            pytest.fail("openssh-server is required here (EDGEQ_REQUIRE_SSHD) and not installed")
        pytest.skip("openssh-server is not installed (apt-get install openssh-server)")
    home = tmp_path_factory.mktemp("ssh")
    host_key, user_key = _keygen(home / "host_key"), _keygen(home / "user_key")
    shutil.copy(user_key.with_suffix(".pub"), home / "authorized_keys")
    port = _free_port()
    (home / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nAuthorizedKeysFile {home / 'authorized_keys'}\n"
        f"PidFile {home / 'sshd.pid'}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        f"KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nMaxStartups 50\nMaxSessions 50\n")
    known = home / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_key.with_suffix('.pub').read_text().split(' ', 2)[0]} "
                     f"{host_key.with_suffix('.pub').read_text().split()[1]}\n")
    config = home / "ssh_config"
    config.write_text(f"Host *\n  IdentityFile {user_key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n"
                      f"  StrictHostKeyChecking yes\n  LogLevel ERROR\n")
    try:
        Path("/run/sshd").mkdir(exist_ok=True)   # the privilege-separation directory sshd insists on as root
    except OSError:
        pass   # not root: sshd then runs as this user without privilege separation
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(home / "sshd_config")], stderr=subprocess.PIPE)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    saved = {k: os.environ.get(k) for k in ("EDGEQ_SSH_CONFIG", "EDGEQ_REMOTE_PYTHON")}
    os.environ["EDGEQ_SSH_CONFIG"] = str(config)
    os.environ["EDGEQ_REMOTE_PYTHON"] = sys.executable   # the device's python: this one, with onnxruntime
    target = home / "loopback-ssh.yaml"
    target.write_text(LOOPBACK_TARGET)
    yield {"host": f"{user}@127.0.0.1:{port}", "port": port, "user": user, "home": home, "known": known,
           "config": config, "target": str(target)}
    server.terminate()
    server.wait(timeout=10)
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def _edgeq(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeq.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=900, env=os.environ.copy())


def _remote_dirs() -> set[str]:
    return set(glob.glob("/tmp/edgeq-runner.*"))


def test_profile_runs_on_the_device_and_says_where(sshd, tiny_onnx):
    before = _remote_dirs()
    done = _edgeq("profile", tiny_onnx["int8"]["path"], "--target", sshd["target"], "--host", sshd["host"],
                  "--runs", "20", "--json")
    assert done.returncode == 0, done.stderr
    m = json.loads(done.stdout)
    assert m["measured"] and m["host"] == sshd["host"] and m["target"]["host"] == sshd["host"]
    assert m["schema"] == "edgeq.measurement/1" and len(m["batches"][0]["samples_ms"]) == 20
    assert m["fingerprint"]["machine"] == os.uname().machine      # this machine, not a Pi
    assert "throttled" in m["device_state"]
    assert _remote_dirs() == before                               # the remote directory is gone


def test_gate_compares_on_the_device(sshd, tiny_onnx):
    a = tiny_onnx["int8"]["path"]
    done = _edgeq("gate", "--baseline", a, "--current", a, "--target", sshd["target"], "--host", sshd["host"],
                  "--max-slowdown", "0.3", "--max-rounds", "8", "--json")
    assert done.returncode == 0, done.stderr
    finding = json.loads(done.stdout)["findings"][0]
    assert finding["verdict"] == "pass" and finding["target"] == "loopback-ssh"


def test_report_times_the_device_in_its_own_rotation(sshd, tmp_path, calib_npy, labelled_npz):
    out = tmp_path / "report"
    done = _edgeq("report", TINY, "--targets", f"x86-cpu-ort,{sshd['target']}", "--recipes", "w8a8-fast",
                  "--calib", calib_npy, "--data", labelled_npz, "--runs", "10", "-o", out, "--host", sshd["host"])
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    targets = {t["name"]: t for t in report["targets"]}
    assert targets["loopback-ssh"]["measured"] and targets["loopback-ssh"]["host"] == sshd["host"]
    assert targets["loopback-ssh"]["fingerprint"]["host"] == sshd["host"]
    rows = {(r["variant"], r["target"]): r for r in report["rows"]}
    device = rows[("w8a8-fast", "loopback-ssh")]
    assert device["measured"] and len(device["latency"]["samples_ms"]) == 10
    assert "this host" in device["evaluated_on"] and device["speedup_vs_target_fp32"] is not None


def test_placement_search_times_candidates_on_the_device(sshd, tmp_path):
    calib = tmp_path / "c.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((16, 3, 112, 112)).astype(np.float32))
    out = tmp_path / "m.edgeq"
    done = _edgeq("quantize", "--model", DEPTHWISE, "--calib", calib, "--recipe", "w8a8", "--iters", "2",
                  "--batch-size", "8", "--target", sshd["target"], "--host", sshd["host"], "-o", out, "--json")
    assert done.returncode == 0, done.stderr
    placements = json.loads((out / "manifest.json").read_text())["fallback"]["placements"]
    assert list(placements) == ["loopback-ssh"] and "not searched" not in placements["loopback-ssh"]["verdict"]


def test_refusals_are_one_sentence_and_leave_nothing(sshd, tiny_onnx, tmp_path):
    model = tiny_onnx["int8"]["path"]
    before = _remote_dirs()
    other = _keygen(tmp_path / "other_key")
    changed = tmp_path / "changed_known_hosts"
    changed.write_text(f"[127.0.0.1]:{sshd['port']} {other.with_suffix('.pub').read_text().split()[0]} "
                       f"{other.with_suffix('.pub').read_text().split()[1]}\n")
    config = sshd["config"].read_text()
    cases = {
        "unreachable": ({}, f"{sshd['user']}@127.0.0.1:{_free_port()}", "cannot reach"),
        "wrong key": ({"EDGEQ_SSH_CONFIG": _config(tmp_path, config.replace(str(sshd["home"] / "user_key"),
                                                                            str(other)))},
                      sshd["host"], "authentication to"),
        "changed host key": ({"EDGEQ_SSH_CONFIG": _config(tmp_path, config.replace(str(sshd["known"]),
                                                                                  str(changed)))},
                             sshd["host"], "host key of"),
        "no onnxruntime": ({"EDGEQ_REMOTE_PYTHON": str(_python_without_onnxruntime(tmp_path))}, sshd["host"],
                           "onnxruntime is not installed"),
        "no numpy": ({"EDGEQ_REMOTE_PYTHON": "/usr/bin/python3"}, sshd["host"], "numpy is not installed"),
        "bad host": ({}, "-oProxyCommand=touch /tmp/pwned", "is not USER@HOST"),
        "timeout": ({"EDGEQ_REMOTE_TIMEOUT": "2"}, sshd["host"], "exceeded its timeout"),
    }
    for name, (env, host, expected) in cases.items():
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            runs = "1000000" if name == "timeout" else "3"
            done = _edgeq("profile", model, "--target", sshd["target"], "--host", host, "--runs", runs)
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        if name == "no numpy" and "No module named" not in subprocess.run(
                ["/usr/bin/python3", "-c", "import numpy"], capture_output=True, text=True).stderr:
            continue   # this machine's system python has numpy: nothing to test
        assert done.returncode == 2 and expected in done.stderr, (name, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, (name, done.stderr)
    assert not Path("/tmp/pwned").exists()
    assert _remote_dirs() == before


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / f"config{len(list(tmp_path.glob('config*')))}"
    path.write_text(text)
    return str(path)


def _python_without_onnxruntime(tmp_path: Path) -> Path:
    """A python on the 'device' whose onnxruntime import fails (as on a Pi where it was never installed)."""
    wrapper = tmp_path / "python-no-ort"
    wrapper.write_text("#!/bin/sh\nexec %s -c 'import sys, runpy; sys.modules[\"onnxruntime\"] = None; "
                       "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name=\"__main__\")' \"$@\"\n"
                       % sys.executable)
    wrapper.chmod(0o755)
    return wrapper


def test_host_values_are_checked_before_any_connection():
    from edgeq.remote import RemoteError, parse_host
    from edgeq.target import TargetError, bind_hosts, get_target
    assert parse_host("pi@raspberrypi.local:2222") == parse_host("pi@raspberrypi.local:2222")
    assert parse_host("pi@[fe80::1]:22").destination == "pi@fe80::1"
    for bad in ("-oProxyCommand=x", "pi@host;rm -rf /", "pi@host:99999", "pi@", "a b@c"):
        with pytest.raises(RemoteError, match="is not USER@HOST"):
            parse_host(bad)
    try:
        bind_hosts(["pi@a.local"])
        assert get_target("rpi4-ort").host == get_target("rpi5-ort").host == "pi@a.local"
        assert get_target("x86-cpu-ort").host is None and get_target("rpi4-ort").unavailable() is None
        bind_hosts(["rpi4-ort=pi@a.local", "rpi5-ort=pi@b.local"])
        assert (get_target("rpi4-ort").host, get_target("rpi5-ort").host) == ("pi@a.local", "pi@b.local")
        with pytest.raises(TargetError, match="without a target"):
            bind_hosts(["pi@a.local", "pi@b.local"])
    finally:
        bind_hosts([])
    assert "give --host" in get_target("rpi4-ort").unavailable()
