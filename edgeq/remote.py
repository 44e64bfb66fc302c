"""Targets reached over SSH (``reach: ssh``, e.g. rpi4-ort): edgeq's runner run on the device.

The host uses the system OpenSSH client, so the user's keys, agent, ``~/.ssh/config`` and known_hosts apply
(``EDGEQ_SSH_CONFIG`` names another config file). BatchMode means nothing ever prompts: an unknown host key
is refused like a changed one — edgeq never accepts a key on the user's behalf. Each use opens a private
temporary directory on the device (``mktemp -d``), uploads ``edgeq/runner.py`` and the artifacts under fixed
names edgeq chooses, runs only the runner (arguments quoted, paths confined to that directory), reads its
JSON from stdout, and removes the directory whatever happened. Nothing but ONNX files and JSON crosses the wire.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import runner
from .errors import EdgeqError

RUNNER_FILE = Path(runner.__file__)
AUDIO_FILE = RUNNER_FILE.with_name("audio.py")
REMOTE_DIR = re.compile(r"^/tmp/edgeq-runner\.[A-Za-z0-9]+$")
_HOST = re.compile(r"^(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?"
                   r"(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\])(?::(?P<port>\d{1,5}))?$")
CONNECT_TIMEOUT_S = 10
RUN_TIMEOUT_S = 1800   # one runner command (EDGEQ_REMOTE_TIMEOUT overrides): a Pi 4 is 10-50x slower than a PC
SLACK_S = 60   # beyond the runner's own timeout, for the connection and the upload


class RemoteError(EdgeqError):
    """The device could not be reached, refused us, or the runner failed there."""


@dataclass(frozen=True)
class Host:
    user: str | None
    name: str
    port: int | None

    @property
    def label(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.name}{':' + str(self.port) if self.port else ''}"

    @property
    def destination(self) -> str:
        host = self.name.strip("[]")
        return f"{self.user}@{host}" if self.user else host


def parse_host(text: str) -> Host:
    """USER@HOST[:PORT] (an IPv6 address in brackets); anything else is refused before ssh sees it."""
    m = _HOST.match(text.strip())
    if not m or (m["port"] and not 0 < int(m["port"]) < 65536):
        raise RemoteError(f"--host {text!r} is not USER@HOST[:PORT].")
    return Host(m["user"], m["host"], int(m["port"]) if m["port"] else None)


def ssh_base(host: Host) -> list[str]:
    # no connection sharing (ControlMaster): a shared master would carry one config's login into a call made
    # with another, and a persisting master holds the captured pipes open; a handshake per call is cheap
    # next to timing a model on a Pi
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}"]
    if os.environ.get("EDGEQ_SSH_CONFIG"):
        cmd += ["-F", os.environ["EDGEQ_SSH_CONFIG"]]
    if host.port:
        cmd += ["-p", str(host.port)]
    return cmd + ["--", host.destination]


def ssh_error(host: Host, stderr: str) -> str:
    """One sentence for what OpenSSH said went wrong."""
    text = stderr.strip()
    if "IDENTIFICATION HAS CHANGED" in text or "has changed" in text:
        return (f"the host key of {host.label} has changed since it was recorded in known_hosts; edgeq refuses to "
                f"connect (check the device, then ssh-keygen -R {host.name.strip('[]')} if the change is expected)")
    if "Host key verification failed" in text or "No ED25519 host key is known" in text:
        return (f"{host.label}'s host key is not in known_hosts; connect once with ssh and check its fingerprint "
                f"(edgeq never accepts a host key by itself)")
    if "Permission denied" in text or "Too many authentication failures" in text:
        return (f"authentication to {host.label} failed (edgeq uses your SSH keys, agent and config; "
                f"`ssh {host.destination}` must work without a password)")
    for sign in ("Connection refused", "timed out", "No route to host", "Could not resolve", "not known",
                 "Connection closed", "Network is unreachable"):
        if sign in text:
            return f"cannot reach {host.label} ({sign.lower()})"
    last = text.splitlines()[-1] if text else "ssh failed without a message"
    return f"ssh to {host.label} failed: {last}"


class Remote:
    """One device session: ``with Remote(host) as r: r.upload(...); r.run(...)``; the directory goes on exit."""

    def __init__(self, host: Host, python: str | None = None):
        # EDGEQ_REMOTE_PYTHON: the device's interpreter, e.g. a venv's (default python3 on its PATH)
        self.host, self.python = host, python or os.environ.get("EDGEQ_REMOTE_PYTHON", "python3")
        self.dir: str | None = None
        self.uploads = 0

    def __enter__(self) -> "Remote":
        # one connection makes the directory and unpacks the runner into it (a handshake costs ~0.4 s on
        # loopback, more on a Pi; a placement search opens a session per measurement). A failed unpack removes
        # the directory before it reports.
        out = self._ssh('umask 077 && d=$(mktemp -d /tmp/edgeq-runner.XXXXXXXX) && cd "$d" && '
                        '{ tar -xof - || { cd / && rm -rf -- "$d"; exit 3; }; } && echo "$d"',
                        data=_runner_tar(), timeout=CONNECT_TIMEOUT_S + 60).strip()
        if not REMOTE_DIR.match(out):
            raise RemoteError(f"{self.host.label} did not create a private temporary directory (mktemp said {out!r}).")
        self.dir = out
        return self

    def __exit__(self, *exc) -> None:
        """Remove the remote directory, whatever happened (a device that went away keeps it)."""
        if self.dir and REMOTE_DIR.match(self.dir):
            try:
                self._ssh(f"rm -rf -- {shlex.quote(self.dir)}", timeout=CONNECT_TIMEOUT_S + 20)
            except RemoteError:
                pass   # the device went away; nothing more we can remove
        self.dir = None

    def upload(self, path: Path) -> str:
        """The artifact's name in the remote directory: m0.onnx, m1.onnx, … in upload order (never the local
        name, so nothing the user named reaches a remote shell)."""
        size_mb = Path(path).stat().st_size / 2**20
        if size_mb > runner.MAX_MODEL_MB:   # refused here rather than after the upload
            raise RemoteError(f"{path} is {size_mb:.0f} MB, over the runner's limit of {runner.MAX_MODEL_MB} MB.")
        name = f"m{self.uploads}.onnx"
        self.uploads += 1
        self._put(Path(path), name)
        return name

    def run(self, args: list[str], timeout_s: float) -> dict:
        """``edgeq_runner.py ARGS --json`` in the remote directory; its JSON, or its one sentence as an error."""
        words = [self.python, "edgeq_runner.py", "--json", "--workdir", ".", "--timeout", f"{timeout_s:g}", *args]
        command = f"cd {shlex.quote(self.dir)} && " + " ".join(shlex.quote(w) for w in words)
        out = self._ssh(command, timeout=timeout_s + SLACK_S, runner_call=True)
        try:
            return json.loads(out)
        except ValueError:
            raise RemoteError(f"the runner on {self.host.label} printed no JSON ({out.strip()[:120]!r}).") from None

    def _put(self, local: Path, name: str) -> None:
        with open(local, "rb") as f:
            self._ssh(f"cat > {shlex.quote(self.dir + '/' + name)}", stdin=f, timeout=CONNECT_TIMEOUT_S + 300)

    def _ssh(self, command: str, timeout: float, stdin=None, data: bytes | None = None,
             runner_call: bool = False) -> str:
        feed = {"input": data} if data is not None else {"stdin": stdin if stdin else subprocess.DEVNULL}
        try:
            done = subprocess.run(ssh_base(self.host) + [command], capture_output=True, timeout=timeout, **feed)
        except subprocess.TimeoutExpired:
            raise RemoteError(f"the run on {self.host.label} exceeded its timeout of {timeout:.0f} s.") from None
        except FileNotFoundError:
            raise RemoteError("the OpenSSH client (ssh) is not installed here (apt-get install openssh-client).") \
                from None
        stderr = done.stderr.decode(errors="replace")
        if done.returncode == 255:
            raise RemoteError(ssh_error(self.host, stderr) + ".")
        if done.returncode != 0:
            last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {done.returncode}"
            if runner_call and done.returncode == 127:
                raise RemoteError(f"{self.python} is not installed on {self.host.label} (the runner needs Python "
                                  f"3.10+ with numpy and onnxruntime).")
            raise RemoteError(f"on {self.host.label}: {last.removeprefix('edgeq-runner: ')}")
        return done.stdout.decode(errors="replace")


def _runner_tar() -> bytes:
    """The runner and its audio features (log-mel for speech models' .wav input) as a tar stream, under the
    names the device runs them by."""
    import io
    import tarfile
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for local, name in ((RUNNER_FILE, "edgeq_runner.py"), (AUDIO_FILE, "edgeq_audio.py")):
            tar.add(local, arcname=name)
    return buffer.getvalue()


def check(host: Host) -> dict:
    """The device's ``info``; refuses a device whose runner cannot run models (no onnxruntime)."""
    with Remote(host) as r:
        found = r.run(["info"], timeout_s=60)
    if not found.get("onnxruntime"):
        raise RemoteError(f"{host.label}: {found.get('problem') or 'onnxruntime is missing'}")
    return found


_FINGERPRINTS: dict[str, dict] = {}


def device_fingerprint(host_text: str) -> dict:
    """What ``Runtime.fingerprint`` says locally, as the device's runner sees it (asked once per process)."""
    if host_text not in _FINGERPRINTS:
        found = check(parse_host(host_text))
        _FINGERPRINTS[host_text] = {"runtime": "ort", **found["machine"], "onnxruntime": found["onnxruntime"],
                                    "providers": found["providers"], "host": parse_host(host_text).label}
    return _FINGERPRINTS[host_text]


def run_timeout() -> float:
    value = os.environ.get("EDGEQ_REMOTE_TIMEOUT")
    try:
        return float(value) if value else RUN_TIMEOUT_S
    except ValueError:
        raise RemoteError(f"EDGEQ_REMOTE_TIMEOUT={value!r} is not a number of seconds.") from None


def bench(host: Host, artifact: Path, threads: int | None, runs: int, warmup: int, batches: list[int]) -> dict:
    """A Measurement taken on the device, labelled with the host it ran on."""
    with Remote(host) as r:
        name = r.upload(artifact)
        args = ["bench", name, "--runs", str(runs), "--warmup", str(warmup)]
        args += (["--threads", str(threads)] if threads else []) + [a for b in batches for a in ("--batch", str(b))]
        result = r.run(args, run_timeout())
    return {**result, "artifact": str(artifact), "host": host.label}


def compare(host: Host, artifacts: list[Path], threads: int | None, runs: int, warmup: int, block: int,
            batch: int, settle_s: float, seed: int) -> dict:
    """The runner's alternating blocks on the device: per artifact (in the order given) its raw times."""
    with Remote(host) as r:
        names = [r.upload(a) for a in artifacts]
        args = ["compare", *names, "--runs", str(runs), "--warmup", str(warmup), "--block", str(block),
                "--batch", str(batch), "--settle-ms", f"{settle_s * 1000:g}", "--seed", str(seed)]
        result = r.run(args + (["--threads", str(threads)] if threads else []), run_timeout())
    by_name = {m["artifact"]: m for m in result["models"]}
    result["models"] = [{**by_name[n], "artifact": str(a)} for n, a in zip(names, artifacts)]
    return {**result, "host": host.label}
