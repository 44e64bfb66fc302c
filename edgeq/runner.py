"""edgeq-runner: the device side of edgeq (a Raspberry Pi, or any machine reached over SSH).

It needs only the standard library, numpy and onnxruntime (Pillow only to read an image for ``predict``), and
works as this single file copied to the device: edgeq's SSH host uploads it next to the artifacts and runs
``python3 edgeq_runner.py …``, so nothing of edgeq has to be installed there. Importing it never imports
torch, timm, onnx or click (a test checks ``sys.modules``).

Commands (``--json`` prints one JSON document on stdout, errors are one sentence on stderr, exit 2):
  info                          the device: CPU, cores, memory, ISA flags, onnxruntime, governor, temperature,
                                throttle state
  bench MODEL.onnx              a Measurement (edgeq.measurement/1, as ``edgeq profile`` writes), raw samples
                                included, and the device state before and after (throttling is flagged)
  compare A.onnx B.onnx …       alternating blocks in a shuffled order per round; the raw per-run times, from
                                which the host computes the same paired ratio as locally
  predict MODEL.onnx --input F  top-k for an .npy array or an image, prepared with the preprocessing edgeq's
                                exporter stored in the model
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

try:
    import numpy as np
except ImportError:   # the one dependency besides onnxruntime; say how to get it instead of a traceback
    print(f"edgeq-runner: numpy is not installed for {sys.executable}; install it on the device with: "
          f"python3 -m pip install onnxruntime numpy.", file=sys.stderr)
    sys.exit(3)

RUNNER_VERSION = "1"
MEASUREMENT_SCHEMA = "edgeq.measurement/1"
MAX_MODEL_MB = 1024
ORT_HINT = "install it on the device with: python3 -m pip install onnxruntime numpy"
# the CPU features int8 and bf16 speed depends on (x86 and Arm names as /proc/cpuinfo spells them)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16",
             "asimd", "asimddp", "i8mm", "sve")
# vcgencmd get_throttled bits: now (0-3) and since boot (16-19)
THROTTLE_BITS = {0: "under-voltage", 1: "arm frequency capped", 2: "throttled", 3: "soft temperature limit"}
TEMPERATURE_JUMP_C = 5.0


class RunnerError(Exception):
    """One sentence for the user; the runner prints it and exits 2."""


# --- the device ---------------------------------------------------------------------------------------

def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):   # x86 / Arm
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def isa_flags() -> list[str]:
    """Which of ISA_FLAGS this CPU has (empty where /proc/cpuinfo is not readable)."""
    flags = cpu_flags()
    return [f for f in ISA_FLAGS if f in flags]


def int8_dot_saturates() -> bool:
    """True on x86 CPUs without VNNI: their u8×s8 int8 kernels (vpmaddubsw) add pairs of products in
    saturating int16, so full-range int8 weights can overflow (ONNX Runtime's documented reason for
    ``reduce_range``). 7-bit weights never do."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    flags = cpu_flags()
    return not ({"avx512_vnni", "avx_vnni", "amx_int8"} & flags) if flags else True


def cpu_model() -> str:
    keys = ("model name", "Model", "Hardware")   # x86; a Pi's board line; older Arm kernels
    try:
        with open("/proc/cpuinfo") as f:
            found = dict(line.split(":", 1) for line in f if ":" in line)
        for key in keys:
            for k, v in found.items():
                if k.strip() == key and v.strip():
                    return v.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine() -> dict:
    return {"platform": platform.platform(), "machine": platform.machine(),
            "processor": cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "isa": isa_flags(), "int8_dot_saturates": int8_dot_saturates()}


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def memory_mb() -> int | None:
    found = [line.split()[1] for line in (_read("/proc/meminfo") or "").splitlines() if line.startswith("MemTotal:")]
    return int(found[0]) // 1024 if found else None


def temperature_c() -> float | None:
    """The hottest thermal zone (a Pi has one, the SoC)."""
    values = [_read(str(zone)) for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*/temp"))]
    temps = [int(v) / 1000.0 for v in values if v and v.lstrip("-").isdigit()]
    return max(temps) if temps else None


def throttle_state() -> dict | None:
    """The firmware's throttle word, from ``vcgencmd get_throttled`` or the sysfs file newer Pi kernels have."""
    raw = None
    if shutil.which("vcgencmd"):
        try:
            out = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=5).stdout
            raw = out.strip().partition("=")[2] or None
        except (OSError, subprocess.SubprocessError):
            raw = None
    if raw is None:
        raw = _read("/sys/devices/platform/soc/soc:firmware/get_throttled")
    if raw is None:
        return None
    try:
        word = int(raw, 16)   # both print hex: "throttled=0x50005" and "50005"
    except ValueError:
        return None
    return {"raw": hex(word), "now": [name for bit, name in THROTTLE_BITS.items() if word & (1 << bit)],
            "since_boot": [name for bit, name in THROTTLE_BITS.items() if word & (1 << (bit + 16))]}


def device_state() -> dict:
    return {"temperature_c": temperature_c(), "throttle": throttle_state(),
            "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")}


def state_change(before: dict, after: dict) -> dict:
    """Before and after a measurement, with a warning when the board throttled or heated up meanwhile."""
    warnings = []
    now = (after.get("throttle") or {}).get("now") or []
    if now:
        warnings.append(f"the device was throttling at the end of the run ({', '.join(now)})")
    t0, t1 = before.get("temperature_c"), after.get("temperature_c")
    if t0 is not None and t1 is not None and t1 - t0 >= TEMPERATURE_JUMP_C:
        warnings.append(f"the temperature rose {t1 - t0:.1f} °C during the run ({t0:.1f} → {t1:.1f} °C)")
    return {"before": before, "after": after, "throttled": bool(now), "warnings": warnings}


def ort_versions() -> dict:
    ort = _onnxruntime()
    return {"onnxruntime": ort.__version__, "providers": ort.get_available_providers()}


def info() -> dict:
    try:
        runtime = ort_versions()
    except RunnerError as exc:
        runtime = {"onnxruntime": None, "problem": str(exc)}
    return {"schema": "edgeq.runner-info/1", "runner_version": RUNNER_VERSION, "machine": machine(),
            "memory_mb": memory_mb(), "numpy": np.__version__, **runtime, **device_state()}


# --- models -------------------------------------------------------------------------------------------

def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        if getattr(exc, "name", None) == "onnxruntime":
            raise RunnerError(f"onnxruntime is not installed for {sys.executable}; {ORT_HINT}.") from None
        raise RunnerError(f"onnxruntime is installed for {sys.executable} but does not import ({exc}); a wheel "
                          f"built for another numpy? {ORT_HINT} --upgrade.") from None
    except Exception as exc:  # noqa: BLE001 - a broken binary wheel fails in many ways
        raise RunnerError(f"onnxruntime is installed for {sys.executable} but does not import "
                          f"({type(exc).__name__}: {exc}); {ORT_HINT} --upgrade.") from None
    return onnxruntime


def checked_model(path: str, max_mb: float = MAX_MODEL_MB) -> Path:
    model = Path(path)
    if not model.is_file():
        raise RunnerError(f"model {path} does not exist.")
    size_mb = model.stat().st_size / 2**20
    if size_mb > max_mb:
        raise RunnerError(f"model {path} is {size_mb:.0f} MB, over the runner's limit of {max_mb:.0f} MB "
                          f"(--max-model-mb).")
    return model


def open_session(path: Path, threads: int | None, quiet: bool = False):
    """An ONNX Runtime CPU session (the host's ``runtimes.ort.session`` is this one); ``quiet``: no ORT error
    log either, for probes whose failure the caller explains itself."""
    ort = _onnxruntime()
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 4 if quiet else 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise RunnerError(f"onnxruntime cannot load {Path(path).name}: {str(exc).splitlines()[0][:200]}.") from None


def metadata(sess) -> dict:
    """What edgeq's exporter stored in the model (edgeq_* keys), JSON values decoded."""
    out = {}
    for key, value in sess.get_modelmeta().custom_metadata_map.items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def random_input(shape: list, batch: int, seed: int, example: list | None = None,
                 integer: bool = False) -> np.ndarray:
    """A fixed random input of the model's shape at ``batch``. Symbolic axes other than the batch take their
    size from ``example`` (the shape edgeq exported with); integer inputs (token ids) are zeros."""
    if isinstance(shape[0], int) and shape[0] != batch:
        raise RunnerError(f"the model has a fixed batch of {shape[0]}; it cannot be timed at batch {batch}.")
    dims = [batch if i == 0 else (d if isinstance(d, int) else (example[i] if example else 1))
            for i, d in enumerate(shape)]
    if integer:
        return np.zeros(dims, dtype=np.int64)
    return np.random.default_rng(seed).standard_normal(dims).astype(np.float32)


def timing_feeds(sess, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    examples = metadata(sess).get("edgeq_input_shapes") or []
    return {i.name: random_input(list(i.shape), batch, seed + k, examples[k] if k < len(examples) else None,
                                 "int" in i.type)
            for k, i in enumerate(sess.get_inputs())}


class Timed:
    """One model's session, its timing input, and its per-run milliseconds."""

    def __init__(self, path: Path, threads: int | None, batch: int):
        start = time.perf_counter()
        self.path, self.sess = path, open_session(path, threads)
        self.load_seconds = time.perf_counter() - start
        self.feeds = timing_feeds(self.sess, batch)
        self.times: list[float] = []

    def step(self, record: bool = True) -> None:
        start = time.perf_counter()
        self.sess.run(None, self.feeds)
        if record:
            self.times.append((time.perf_counter() - start) * 1000.0)


def latency_stats(samples_ms: list[float], batch: int) -> dict:
    """Percentiles, mean, spread and throughput of timed runs, with the raw samples (for a later gate)."""
    t = np.array(samples_ms)
    p50, p90, p99 = (float(np.percentile(t, q)) for q in (50, 90, 99))
    return {"batch": batch, "runs": len(t), "p50_ms": round(p50, 4), "p90_ms": round(p90, 4),
            "p99_ms": round(p99, 4), "mean_ms": round(float(t.mean()), 4), "std_ms": round(float(t.std()), 4),
            "throughput_per_s": round(batch * 1000.0 / float(t.mean()), 2),
            "samples_ms": [round(float(v), 4) for v in t]}


def rss_mb() -> float:
    text = _read("/proc/self/statm")
    return int(text.split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20 if text else 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- commands -----------------------------------------------------------------------------------------

def bench(model: str, threads: int | None, runs: int, warmup: int, batches: list[int], max_mb: float) -> dict:
    path = checked_model(model, max_mb)
    before = device_state()
    rows = []
    for batch in batches:
        rss_before = rss_mb()
        timed = Timed(path, threads, batch)
        for _ in range(warmup):
            timed.step(record=False)
        for _ in range(runs):
            timed.step()
        stats = latency_stats(timed.times, batch)
        rows.append({**stats, "load_seconds": round(timed.load_seconds, 3),
                     "rss_growth_mb": round(rss_mb() - rss_before, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
                     "samples_ms": stats.pop("samples_ms")})
    return {"schema": MEASUREMENT_SCHEMA, "artifact": path.name, "form": "onnx", "bytes": path.stat().st_size,
            "measured": True, "threads": threads, "runs": runs, "warmup": warmup,
            "fingerprint": {"runtime": "ort", **machine(), **ort_versions()}, "batches": rows,
            "device_state": state_change(before, device_state()), "runner_version": RUNNER_VERSION}


def compare(models: list[str], threads: int | None, runs: int, warmup: int, block: int, batch: int,
            settle_s: float, seed: int, max_mb: float) -> dict:
    """Every model timed in blocks of ``block`` runs, the models' order shuffled each round (a model always
    timed first, right after another's threads, would carry that position's cost as its own)."""
    paths = [checked_model(m, max_mb) for m in models]
    before = device_state()
    timed = [Timed(p, threads, batch) for p in paths]
    rotate(timed, runs, warmup, block, np.random.default_rng(seed), settle_s)
    return {"schema": "edgeq.runner-compare/1", "block": block, "batch": batch, "threads": threads,
            "models": [{"artifact": t.path.name, "load_seconds": round(t.load_seconds, 3),
                        "samples_ms": [round(v, 4) for v in t.times]} for t in timed],
            "fingerprint": {"runtime": "ort", **machine(), **ort_versions()},
            "device_state": state_change(before, device_state()), "runner_version": RUNNER_VERSION}


def rotate(models: list, runs: int, warmup: int, block: int, order: np.random.Generator, settle_s: float) -> None:
    """Warm each model up, then time ``runs`` runs of each in blocks of ``block``, the models' order shuffled
    each round (the host's ``profile.latency.interleave`` times its sessions with this too). A model always
    timed first, right after another's threads, or always last, would carry that position's cost as its own.
    ``models``: anything with ``step(record=True)``; a pause (``pause_until_quiet``) and one untimed run open each
    block."""
    for m in models:
        for _ in range(warmup):
            m.step(record=False)
    for _ in range(math.ceil(runs / block)):
        for i in order.permutation(len(models)):
            pause_until_quiet(settle_s)
            models[i].step(record=False)
            for _ in range(block):
                models[i].step()


def pause_until_quiet(minimum_s: float, limit_s: float = 0.3) -> None:
    """Sleep ``minimum_s``, then until this process uses no CPU (at most ``limit_s``): ONNX Runtime's workers spin
    ~37 ms after a run (Zen 5); a block sharing the cores with them, OpenVINO's above all, reads ~10 % slow."""
    time.sleep(minimum_s)
    end = time.perf_counter() + limit_s
    while time.perf_counter() < end:
        used = time.process_time()
        time.sleep(0.005)
        if time.process_time() - used < 0.0005:
            return


def predict(model: str, input_path: str, top: int, max_mb: float) -> dict:
    path = checked_model(model, max_mb)
    sess = open_session(path, None)
    meta = metadata(sess)
    first = sess.get_inputs()[0]
    x = load_input(input_path, list(first.shape), meta.get("edgeq_preprocess"))
    if len(sess.get_inputs()) != 1:
        raise RunnerError(f"{path.name} takes {len(sess.get_inputs())} inputs; predict feeds one.")
    try:
        logits = np.asarray(sess.run(None, {first.name: x})[0], dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise RunnerError(f"onnxruntime could not run {path.name} on {input_path}: "
                          f"{str(exc).splitlines()[0][:200]}.") from None
    result = {"schema": "edgeq.runner-predict/1", "artifact": path.name, "input": Path(input_path).name,
              "preprocessed_shape": list(x.shape)}
    if meta.get("edgeq_ctc_charset"):   # a CTC model: best-path transcript per sample
        return {**result, "transcripts": ctc_greedy(logits, meta["edgeq_ctc_charset"])}
    labels = meta.get("edgeq_labels") or []
    rows = []
    for sample in logits.reshape(logits.shape[0], -1):
        p = np.exp(sample - sample.max())
        p /= p.sum()
        best = np.argsort(-p)[:top]
        rows.append([{"class": int(k), "label": labels[k] if k < len(labels) else None,
                      "probability": round(float(p[k]), 5)} for k in best])
    return {**result, "top": rows}


def ctc_greedy(logits: np.ndarray, charset: list[str]) -> list[str]:
    """Argmax per frame, repeats collapsed, the blank (charset entry "") dropped (as edgeq's ``ctc``)."""
    blank = charset.index("")
    texts = []
    for ids in logits.argmax(-1):
        keep = np.ones(len(ids), bool)
        keep[1:] = ids[1:] != ids[:-1]
        texts.append("".join(charset[i] for i in ids[keep] if i != blank and i < len(charset)))
    return texts


def load_input(path: str, shape: list, prep: dict | None) -> np.ndarray:
    """An .npy array (already the model's input, or one image as uint8 H×W[×C]), an image file, or a .wav clip
    for a speech model (log-mel features by edgeq's own ``audio`` module)."""
    file = Path(path)
    if not file.is_file():
        raise RunnerError(f"input {path} does not exist.")
    if file.suffix.lower() == ".wav":
        return audio_features(file, shape, prep)
    if file.suffix == ".npy":
        try:
            x = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise RunnerError(f"input {path} is not a readable .npy array ({exc}).") from None
        if x.dtype == np.uint8:
            return prepare_image(x, shape, prep)
        x = x.astype(np.float32)
        if x.ndim == len(shape) - 1:
            x = x[None]
        _check_shape(x, shape, path)
        return x
    try:
        from PIL import Image
    except ImportError:
        raise RunnerError(f"reading {file.suffix} images needs Pillow on the device (python3 -m pip install "
                          f"pillow); or pass a .npy array.") from None
    try:
        with Image.open(file) as img:
            return prepare_image(np.asarray(img.convert("RGB")), shape, prep)
    except OSError as exc:
        raise RunnerError(f"input {path} is not a readable image ({exc}).") from None


def audio_features(file: Path, shape: list, prep: dict | None) -> np.ndarray:
    """[1, frames, mels] features of a WAV clip, computed by ``edgeq.audio`` (see ``_audio_module``)."""
    if not prep or prep.get("kind") != "log-mel":
        raise RunnerError(f"{file.name} is audio, but this model takes no audio features (its input is {shape}).")
    audio = _audio_module()
    limit = shape[1] if isinstance(shape[1], int) else None
    try:
        return audio.clip_features(file, audio.Features.from_dict(prep), limit)[None]
    except audio.AudioError as exc:
        raise RunnerError(str(exc)) from None


def _audio_module():
    """edgeq's audio code: the copy next to this file (uploaded by edgeq, or installed by the edgeq-runner wheel),
    loaded by its path because ``python -I`` / ``-P`` leave the script's folder off sys.path; else edgeq's own."""
    sibling = Path(__file__).with_name("edgeq_audio.py")
    if sibling.is_file() and "edgeq_audio" not in sys.modules:
        import importlib.util
        spec = importlib.util.spec_from_file_location("edgeq_audio", sibling)
        sys.modules["edgeq_audio"] = module = importlib.util.module_from_spec(spec)   # first: its dataclasses ask
        spec.loader.exec_module(module)
    if "edgeq_audio" in sys.modules:
        return sys.modules["edgeq_audio"]
    try:
        from edgeq import audio
    except ImportError:
        raise RunnerError("audio input needs edgeq_audio.py next to the runner (edgeq uploads it; the "
                          "edgeq-runner wheel includes it).") from None
    return audio


def prepare_image(pixels: np.ndarray, shape: list, prep: dict | None) -> np.ndarray:
    """uint8 H×W or H×W×C → the model's [1, C, H, W] float input: resized (bilinear, antialiased), channels
    matched (luminance for grey as PIL's "L" mode, grey repeated for colour), normalised by the model's own
    mean/std — the same steps as edgeq's ``preprocess_uint8``."""
    if not prep:
        raise RunnerError("this model carries no preprocessing metadata (exported by an older edgeq or another "
                          "tool); pass the prepared input as a float .npy array.")
    if pixels.ndim not in (2, 3):
        raise RunnerError(f"an image must be H×W or H×W×C, got shape {list(pixels.shape)}.")
    channels, (h, w) = prep["channels"], prep["size"]
    x = pixels.astype(np.float32) / 255.0
    x = x[..., None] if x.ndim == 2 else x[..., :3]
    if x.shape[-1] != channels:
        if channels == 1:
            weights = np.array([0.299, 0.587, 0.114][: x.shape[-1]], dtype=np.float32)
            x = (x * weights).sum(-1, keepdims=True) / weights.sum()
        elif x.shape[-1] == 1:
            x = np.repeat(x, channels, axis=-1)
        else:
            raise RunnerError(f"the image has {x.shape[-1]} channels and the model takes {channels}.")
    if x.shape[:2] != (h, w):
        x = _resize(x, h, w)
    mean = np.array(prep["mean"], dtype=np.float32).reshape(1, 1, -1)
    std = np.array(prep["std"], dtype=np.float32).reshape(1, 1, -1)
    out = ((x - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
    _check_shape(out, shape, "the prepared image")
    return out


def _resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image   # PIL's BILINEAR resize antialiases when shrinking, as torch's antialias=True
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(x[..., c])).resize((w, h), Image.BILINEAR))
              for c in range(x.shape[-1])]   # float32 planes: PIL mode "F"
    return np.stack(planes, axis=-1)


def _check_shape(x: np.ndarray, shape: list, what: str) -> None:
    fixed = [(i, d) for i, d in enumerate(shape) if isinstance(d, int) and i > 0]
    if x.ndim != len(shape) or any(x.shape[i] != d for i, d in fixed):
        raise RunnerError(f"{what} has shape {list(x.shape)}; the model takes {shape}.")


# --- command line -------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeq-runner", description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--timeout", type=float, default=0, help="give up after this many seconds (0: never)")
    p.add_argument("--max-model-mb", type=float, default=MAX_MODEL_MB)
    p.add_argument("--workdir", help="refuse any model or input path outside this directory")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="the device, its runtime and its thermal state")
    b = sub.add_parser("bench", help="a Measurement of one model")
    b.add_argument("model")
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--runs", type=int, default=200)
    b.add_argument("--warmup", type=int, default=20)
    b.add_argument("--batch", type=int, action="append")
    c = sub.add_parser("compare", help="several models in alternating blocks")
    c.add_argument("models", nargs="+")
    for flag, default in (("--threads", None), ("--runs", 100), ("--warmup", 10), ("--block", 5), ("--batch", 1),
                          ("--seed", 0)):
        c.add_argument(flag, type=int, default=default)
    c.add_argument("--settle-ms", type=float, default=20.0, help="the least pause before each block")
    r = sub.add_parser("predict", help="top-k for an .npy array or an image")
    r.add_argument("model")
    r.add_argument("--input", required=True)
    r.add_argument("--top", type=int, default=5)
    for cmd in (b, c, r):   # accepted after the command too
        cmd.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
        cmd.add_argument("--timeout", type=float, default=argparse.SUPPRESS)
        cmd.add_argument("--max-model-mb", type=float, default=argparse.SUPPRESS)
    return p


def _run(args) -> dict:
    batch = getattr(args, "batch", None)
    counts = [getattr(args, k, None) for k in ("runs", "block", "top", "threads")]
    counts += batch if isinstance(batch, list) else [batch]
    if any(v is not None and v <= 0 for v in counts) or getattr(args, "warmup", 0) < 0:
        raise RunnerError("--runs, --block, --top, --threads and --batch must be positive, --warmup not negative.")
    if args.workdir:   # every path is taken relative to it and must stay inside it
        for key in ("model", "input"):
            if getattr(args, key, None) is not None:
                setattr(args, key, confined(getattr(args, key), args.workdir))
        if getattr(args, "models", None):
            args.models = [confined(m, args.workdir) for m in args.models]
    if args.command == "info":
        return info()
    if args.command == "bench":
        return bench(args.model, args.threads, args.runs, args.warmup, args.batch or [1], args.max_model_mb)
    if args.command == "compare":
        return compare(args.models, args.threads, args.runs, args.warmup, args.block, args.batch,
                       args.settle_ms / 1000.0, args.seed, args.max_model_mb)
    return predict(args.model, args.input, args.top, args.max_model_mb)


def confined(path: str, workdir: str) -> str:
    """``path`` under ``workdir``; refused when it resolves outside it (through ``..``, an absolute path or a
    link)."""
    root = Path(workdir).resolve()
    resolved = Path(root, path).resolve()
    if not resolved.is_relative_to(root):
        raise RunnerError(f"{path} is outside the runner's working directory.")
    return str(resolved)


def _on_timeout(signum, frame):
    raise RunnerError("the run exceeded its timeout")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.timeout > 0:
        signal.signal(signal.SIGALRM, _on_timeout)
        signal.setitimer(signal.ITIMER_REAL, args.timeout)
    try:
        result = _run(args)
    except RunnerError as exc:
        text = str(exc)
        print(f"edgeq-runner: {text}{'' if text.endswith('.') else '.'}", file=sys.stderr)
        return 2
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    print(json.dumps(result) if args.json else _human(result))
    return 0


def _human(result: dict) -> str:
    schema = result.get("schema", "")
    if schema.endswith("runner-info/1"):
        m = result["machine"]
        return (f"{m['processor']} ({m['machine']}, {m['cpu_count']} cores, {result['memory_mb']} MB), "
                f"ISA {', '.join(m['isa']) or 'none listed'}; onnxruntime {result.get('onnxruntime') or 'missing'}; "
                f"governor {result['governor']}; temperature {result['temperature_c']} °C; "
                f"throttle {result['throttle'] or 'not reported'}")
    if schema == MEASUREMENT_SCHEMA:
        lines = [f"{result['artifact']}: batch {b['batch']}: p50 {b['p50_ms']} ms, p90 {b['p90_ms']} ms "
                 f"({b['runs']} runs)" for b in result["batches"]]
        return "\n".join(lines + result["device_state"]["warnings"])
    if schema.endswith("runner-compare/1"):
        return "\n".join(f"{m['artifact']}: median {np.median(m['samples_ms']):.3f} ms ({len(m['samples_ms'])} runs)"
                         for m in result["models"])
    if "transcripts" in result:
        return "\n".join(result["transcripts"])
    return "\n".join(", ".join(f"{r['label'] or r['class']} {r['probability']:.3f}" for r in row)
                     for row in result["top"])


if __name__ == "__main__":
    sys.exit(main())
