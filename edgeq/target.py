"""Device targets as files: a target is a device, a runtime and its settings (``targets/*.yaml``).

The shipped files live in ``edgeq/targets/`` (package data, so an installed edgeq finds them; the checkout's
top-level ``targets/`` points there). ``--target`` takes a shipped name, one of its aliases (``ort-cpu``,
``openvino-cpu``), or the path of a YAML file of the same form. Every file is validated on load and an error
names the file and the field.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import EdgeqError
from .runtimes import get_runtime, runtimes
from .runtimes.base import EXPORT_FORMS, PRECISIONS, Runtime
from .yamlfile import read_mapping

TARGET_DIR = Path(__file__).parent / "targets"
DEFAULT_TARGET = "x86-cpu-ort"
REACH = ("local", "ssh", "none")
FIELDS = ("name", "description", "aliases", "runtime", "artifact", "threads", "batch_sizes", "reach", "options")


class TargetError(EdgeqError):
    pass


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    runtime: str
    form: str                 # the ``edgeq export --to`` output it runs
    precision: str
    threads: int | None       # None: the runtime's default
    batch_sizes: tuple[int, ...]
    reach: str                # local | ssh | none
    options: dict = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    source: str = ""          # the file it was read from
    host: str | None = None   # reach ssh: USER@HOST[:PORT] from --host

    @property
    def plugin(self) -> Runtime:
        return get_runtime(self.runtime)

    @property
    def qdq_form(self) -> str:
        """The int8 ONNX graph form exported for this target (its runtime's)."""
        return self.plugin.qdq_form

    def unavailable(self) -> str | None:
        """Why this target cannot be measured from here, or None."""
        if self.reach == "none":
            return f"{self.name} is not reachable from edgeq (export here, build and measure on the device)"
        if self.reach == "ssh":
            return None if self.host else f"{self.name} is reached over SSH: give --host USER@HOST[:PORT]"
        return self.plugin.available()

    def fingerprint(self) -> dict:
        """The device as the runtime sees it: this machine, or the SSH device's runner ``info``."""
        if self.reach == "ssh" and self.host:
            from .remote import device_fingerprint
            return device_fingerprint(self.host)
        return self.plugin.fingerprint()

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "runtime": self.runtime,
                "artifact": {"form": self.form, "precision": self.precision}, "threads": self.threads,
                "batch_sizes": list(self.batch_sizes), "reach": self.reach, "options": dict(self.options),
                **({"host": self.host} if self.host else {})}


def shipped() -> dict[str, Target]:
    """The targets edgeq ships, by name."""
    return {t.name: t for t in (read_target(p) for p in sorted(TARGET_DIR.glob("*.yaml")))}


def target_names() -> list[str]:
    """Names and aliases ``--target`` accepts (besides a file path)."""
    found = shipped()
    return sorted(found) + sorted(a for t in found.values() for a in t.aliases)


def bind_hosts(values: list[str] | tuple[str, ...]) -> None:
    """``--host`` values: ``USER@HOST[:PORT]`` serves every SSH target, ``TARGET=USER@HOST[:PORT]`` one of
    them (several such spread a report's targets over several devices)."""
    from .remote import parse_host
    _HOSTS.clear()
    plain = [v for v in values if "=" not in v]
    if len(plain) > 1:
        raise TargetError(f"--host was given {len(plain)} times without a target; name the target of each "
                          f"(--host rpi4-ort=pi@pi4.local --host rpi5-ort=pi@pi5.local).")
    for value in values:
        name, _, host = value.rpartition("=")
        parse_host(host)   # refused here, before any connection
        key = get_target(name).name if name else "*"
        _HOSTS[key] = host


_HOSTS: dict[str, str] = {}
_FROM_FILES: dict[str, Target] = {}   # targets this process read from YAML files, by name


def get_target(name_or_path: str | Target) -> Target:
    if isinstance(name_or_path, Target):
        return name_or_path
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")):
        target = read_target(Path(text))
        _FROM_FILES[target.name] = target   # later stages pass the target on by name
        return _with_host(target)
    found = {**shipped(), **_FROM_FILES}
    for target in found.values():
        if text == target.name or text in target.aliases:
            return _with_host(target)
    raise TargetError(f"unknown target {text!r}: use one of {', '.join(target_names())}, or a targets/*.yaml file.")


def remember(target: Target) -> None:
    """Make ``target`` (with its host) known by name in this process: a freshly spawned process gets targets
    as objects, and what it calls looks them up by name."""
    _FROM_FILES[target.name] = target


def _with_host(target: Target) -> Target:
    host = _HOSTS.get(target.name, _HOSTS.get("*")) if target.reach == "ssh" else None
    return replace(target, host=host) if host else target


def read_target(path: Path) -> Target:
    return _validated(read_mapping(path, FIELDS, "target", TargetError), path)


def _validated(data: dict, path: Path) -> Target:
    def bad(key: str, expected: str):
        return TargetError(f"{path}: field {key!r} must be {expected}, got {data.get(key)!r}.")

    for key in ("name", "description", "runtime"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise bad(key, "a non-empty string")
    if data["runtime"] not in runtimes():
        raise bad("runtime", f"one of {', '.join(sorted(runtimes()))}")
    artifact = data.get("artifact")
    if not isinstance(artifact, dict) or artifact.get("form") not in EXPORT_FORMS \
            or artifact.get("precision") not in PRECISIONS:
        raise bad("artifact", f"{{form: {'|'.join(EXPORT_FORMS)}, precision: {'|'.join(PRECISIONS)}}}")
    if artifact["form"] != get_runtime(data["runtime"]).form.export:
        raise bad("artifact", f"form {get_runtime(data['runtime']).form.export!r} (what the "
                              f"{data['runtime']} runtime runs)")
    threads = data.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads <= 0):
        raise bad("threads", "a positive integer or null")
    sizes = data.get("batch_sizes")
    if not isinstance(sizes, list) or not sizes or \
            not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in sizes):
        raise bad("batch_sizes", "a non-empty list of positive integers")
    if data.get("reach") not in REACH:
        raise bad("reach", " | ".join(REACH))
    options = data.get("options", {}) or {}
    if not isinstance(options, dict):
        raise bad("options", "a mapping")
    aliases = data.get("aliases", []) or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise bad("aliases", "a list of names")
    return Target(data["name"], data["description"].strip(), data["runtime"], artifact["form"],
                  artifact["precision"], threads, tuple(sizes), data["reach"], options, tuple(aliases), str(path))
