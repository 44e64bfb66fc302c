"""The speech zoo model (zoo:conformer_ctc_s): audio input, block map, quantization, dynamic-time exports, metrics."""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgeq import api, audio
from edgeq.cli import main
from edgeq.metrics import get_metric
from edgeq.models.zoo import SPEECH_ZOO, ZOO_DIR

MODEL = "zoo:conformer_ctc_s"
WAVS = ZOO_DIR / "data" / "speech_wav"
CHARSET = SPEECH_ZOO["conformer_ctc_s"].charset_path


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def one_error(code, output, fragment):
    assert code == 2, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], output
    assert "Traceback" not in output


def tone(seconds: float, rate: int = 16000, channels: int = 1, level: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = level * np.sin(2 * np.pi * 440 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
    return np.repeat(wave[:, None], channels, axis=1).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    import wave
    samples = samples[:, None] if samples.ndim == 1 else samples
    with wave.open(str(path), "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


# ---- features and audio input -----------------------------------------------------------------------

def test_log_mel_frames_and_normalisation():
    feats = audio.log_mel(tone(1.0)[:, 0])
    assert feats.shape == (audio.DEFAULT.frames(16000), 40) == (98, 40)
    assert np.allclose(feats.mean(axis=0), 0, atol=1e-4)   # cepstral mean normalisation
    noisy = tone(1.0)[:, 0] + 0.01 * np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    assert np.allclose(audio.log_mel(noisy), audio.log_mel(4 * noisy), atol=1e-3)   # gain does not move them


def test_wav_rate_and_channels_are_converted(tmp_path):
    mono16 = audio.clip_features(write_wav(tmp_path / "a.wav", tone(1.0), 16000))
    stereo8 = audio.clip_features(write_wav(tmp_path / "b.wav", tone(1.0, 8000, channels=2), 8000))
    assert mono16.shape == stereo8.shape
    assert np.corrcoef(mono16.ravel(), stereo8.ravel())[0, 1] > 0.9   # the same tone, resampled


@pytest.mark.parametrize("make, fragment", [
    (lambda p: write_wav(p, np.zeros((16000, 1), np.float32), 16000), "is silent (digital silence"),
    (lambda p: write_wav(p, tone(1.0, level=0.001), 16000), "is silent (peak -58 dBFS, below -50 dBFS)"),
    (lambda p: write_wav(p, np.zeros((0, 1), np.float32), 16000), "is empty"),
    (lambda p: write_wav(p, tone(0.01), 16000), "shorter than one 25 ms analysis window"),
    (lambda p: write_wav(p, tone(1.0, 2000), 2000), "sample rate of 2000 Hz"),
    (lambda p: p.write_bytes(b"RIFF0000WAVEjunk"), "not a readable PCM WAV file"),
    (lambda p: write_wav(p, tone(11.0), 16000), "is 11.0 s long; the model takes at most 10.0 s"),
])
def test_bad_clips_are_one_sentence(tmp_path, make, fragment):
    make(tmp_path / "clip.wav")
    with pytest.raises(audio.AudioError, match=None) as info:
        audio.clip_features(tmp_path / "clip.wav", max_frames=1000)
    assert fragment in str(info.value) and str(info.value).count(". ") <= 1


def test_calibration_folder_without_audio_is_refused(tmp_path):
    (tmp_path / "calib").mkdir()
    (tmp_path / "calib" / "notes.txt").write_text("no audio here")
    code, output = run("quantize", "--model", MODEL, "--calib", tmp_path / "calib", "--recipe", "w8a8-fast",
                       "-o", tmp_path / "out.edgeq")
    one_error(code, output, "contains no audio (.wav clips)")
    assert not (tmp_path / "out.edgeq").exists()


def test_a_long_clip_in_the_calibration_folder_is_refused(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    write_wav(folder / "long.wav", tone(12.0), 16000)
    code, output = run("quantize", "--model", MODEL, "--calib", folder, "--recipe", "w8a8-fast",
                       "-o", tmp_path / "out.edgeq")
    one_error(code, output, "long.wav is 12.0 s long")
    assert not (tmp_path / "out.edgeq").exists()


# ---- metrics ----------------------------------------------------------------------------------------

def one_hot(sequences: list[list[int]], frames: int = 12, classes: int = 11) -> np.ndarray:
    out = np.zeros((len(sequences), frames, classes), np.float32)
    out[:, :, 0] = 1
    for i, ids in enumerate(sequences):
        for j, c in enumerate(ids):
            out[i, 2 * j, 0], out[i, 2 * j, c] = 0, 1
    return out


def test_sequence_accuracy_and_decode_agreement():
    outputs = one_hot([[3, 4], [5], [1, 1]])   # "23", "4", "00"
    seq = get_metric("ctc-seq", CHARSET)
    assert seq.score([outputs], np.array(["23", "4", "01"])) == pytest.approx(2 / 3)
    assert seq.unit == "pp" and seq.higher_is_better
    agreement = get_metric("ctc-agreement")
    assert agreement.score([one_hot([[3, 4], [6], [1, 1]])], None, [outputs]) == pytest.approx(2 / 3)


# ---- the zoo model ----------------------------------------------------------------------------------

def test_inspect_shows_the_conformer_parts_and_bridge_candidates():
    result = api.inspect(MODEL)
    blocks = {b["name"]: b for b in result["blocks"]}
    assert [n for n in blocks if n.startswith("encoders.0.")] == [
        "encoders.0.feed_forward_macaron", "encoders.0.self_attn", "encoders.0.conv_module",
        "encoders.0.feed_forward"]
    assert blocks["encoders.0.self_attn"]["kind"] == "attention"
    assert blocks["embed"]["kind"] == "stem" and blocks["embed"]["bridge_candidate"]
    assert all(blocks[f"encoders.{i}.conv_module"]["bridge_candidate"] for i in range(4))
    assert not blocks["encoders.0.feed_forward"]["bridge_candidate"] and blocks["ctc_head"]["kind"] == "head"
    assert result["input"]["dynamic"] == [1, 32, 1000] and result["input"]["features"]["n_mels"] == 40


@pytest.fixture(scope="module")
def speech_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("speech") / "w8a8.edgeq"
    api.quantize(MODEL, "zoo", "w8a8", out, calib_size=64, iters=20, latency_search=False)
    return out


def test_w8a8_keeps_the_digit_strings(speech_bundle, tmp_path):
    api.export(speech_bundle, "onnx", tmp_path / "m.onnx", precision="int8")
    result = api.evaluate(str(tmp_path / "m.onnx"), "zoo:test", limit=300)
    metric = result["metric"]
    assert metric["name"] == "ctc-seq" and metric["fp32"] > 90
    assert metric["drop"] <= 2.0, metric   # 300 clips, a short reconstruction; the bench holds the real number
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx"), load_external_data=False).metadata_props}
    assert json.loads(meta["edgeq_preprocess"])["kind"] == "log-mel"
    assert json.loads(meta["edgeq_ctc_charset"])[:3] == ["", "0", "1"]


def test_onnx_runs_1_3_and_7_seconds_like_the_fake_quant_model(speech_bundle, tmp_path):
    import torch

    from edgeq.bundle import quantized_graph, read_bundle
    from edgeq.runtimes import ort as ort_cpu
    api.export(speech_bundle, "onnx", tmp_path / "m.onnx", precision="int8")
    sess = ort_cpu.session(tmp_path / "m.onnx")
    gm = quantized_graph(read_bundle(speech_bundle))
    rng = np.random.default_rng(0)
    clips = list(WAVS.glob("*.wav"))
    for seconds in (1, 3, 7):
        frames = audio.DEFAULT.frames(seconds * 16000)
        parts = [audio.clip_features(c) for c in clips]   # real speech repeated to the length
        x = np.concatenate(parts * 8)[:frames][None] + 0.01 * rng.standard_normal((1, frames, 40), np.float32)
        onnx_out = sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]
        with torch.no_grad():
            torch_out = gm(torch.from_numpy(x.astype(np.float32)))
        torch_out = (torch_out[0] if isinstance(torch_out, (tuple, list)) else torch_out).numpy()
        assert onnx_out.shape == torch_out.shape == (1, (frames + 3) // 4, 11)
        cos = float((onnx_out * torch_out).sum() / np.linalg.norm(onnx_out) / np.linalg.norm(torch_out))
        assert cos > 0.99, (seconds, cos)


def test_tensorrt_profile_spans_the_time_axis(speech_bundle, tmp_path):
    api.export(speech_bundle, "tensorrt", tmp_path / "trt")
    script = (tmp_path / "trt" / "trtexec.sh").read_text()
    assert "--minShapes=input:1x32x40" in script and "--optShapes=input:1x300x40" in script
    assert "--maxShapes=input:32x1000x40" in script


def test_coreml_takes_a_range_of_lengths(speech_bundle, tmp_path):
    pytest.importorskip("coremltools")
    import coremltools as ct
    record = api.export(speech_bundle, "coreml", tmp_path / "m.mlpackage")
    spec = ct.utils.load_spec(str(tmp_path / "m.mlpackage"))
    ranges = spec.description.input[0].type.multiArrayType.shapeRange.sizeRanges
    assert (ranges[1].lowerBound, ranges[1].upperBound) == (32, 1000)
    assert record["dynamic_axis"]["max"] == 1000


def test_a_folder_of_wav_clips_calibrates_and_evaluates(speech_bundle, tmp_path):
    clips = sorted(WAVS.glob("*.wav"))   # named NN_DIGITS.wav: the transcript is in the name
    (tmp_path / "labels.txt").write_text("".join(c.stem.split("_")[1] + "\n" for c in clips))
    code, output = run("quantize", "--model", MODEL, "--calib", WAVS, "--recipe", "w8a8-fast",
                       "-o", tmp_path / "fast.edgeq")
    assert code == 0, output
    code, output = run("eval", tmp_path / "fast.edgeq", "--data", WAVS, "--labels", tmp_path / "labels.txt",
                       "--metric", "ctc-seq", "--charset", CHARSET, "--json")
    assert code == 0, output
    result = json.loads(output)
    assert result["samples"] == len(clips) and result["metric"]["fp32"] >= 75, result["metric"]


def test_the_runner_transcribes_a_wav_clip_without_edgeq(speech_bundle, tmp_path):
    """A device with the runner and edgeq_audio.py only (what edgeq uploads): log-mel, ONNX, CTC decode."""
    import shutil
    import subprocess
    import sys

    from edgeq import runner
    api.export(speech_bundle, "onnx", tmp_path / "m.onnx", precision="int8")
    shutil.copy(runner.__file__, tmp_path / "edgeq_runner.py")
    shutil.copy(audio.__file__, tmp_path / "edgeq_audio.py")
    clips = sorted(WAVS.glob("*.wav"))
    for clip in clips:
        shutil.copy(clip, tmp_path / clip.name)
    (tmp_path / "probe.py").write_text(
        # loads the runner by its path: with -I the folder is not on sys.path, so the runner must find
        # edgeq_audio.py beside itself (as on a device), not fall back to an installed edgeq
        "import importlib.util, json, sys\n"
        "spec = importlib.util.spec_from_file_location('edgeq_runner', 'edgeq_runner.py')\n"
        "edgeq_runner = importlib.util.module_from_spec(spec); sys.modules['edgeq_runner'] = edgeq_runner\n"
        "spec.loader.exec_module(edgeq_runner)\n"
        "rc = edgeq_runner.main(sys.argv[1:])\n"
        "print(json.dumps(sorted(m for m in ('torch', 'onnx', 'edgeq', 'scipy') if m in sys.modules)))\n")
    heard = []
    for clip in clips:
        done = subprocess.run([sys.executable, "-I", "probe.py", "--workdir", ".", "--json", "predict", "m.onnx",
                               "--input", clip.name], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        result, imported = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
        assert imported == [] and result["preprocessed_shape"][2] == 40
        heard.append(result["transcripts"][0] == clip.stem.split("_")[1])
    assert sum(heard) >= len(clips) - 2, heard
    (tmp_path / "silent.wav").write_bytes(audio.wav_bytes(np.zeros(16000, np.float32), 16000))
    done = subprocess.run([sys.executable, "-I", str(tmp_path / "edgeq_runner.py"), "--workdir", ".", "predict",
                           "m.onnx", "--input", "silent.wav"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "is silent (digital silence" in done.stderr, done.stderr
