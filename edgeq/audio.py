"""Audio → log-mel features, the one function the speech zoo is trained, calibrated, evaluated and run on.

``log_mel`` needs numpy only (the Pi runner can compute features without torch); reading a WAV file uses the
standard library's ``wave``; only resampling another rate to 16 kHz needs scipy (the host has it; a device
without scipy is told to send 16 kHz audio).

Features: 16 kHz mono, 25 ms Hann windows every 10 ms (512-point FFT), power spectrum, 40 HTK-mel bands
20–7600 Hz, natural log (floor 1e-6), each band's mean over the clip subtracted (cepstral mean normalisation:
a microphone's gain or colour does not move the features). Shape ``[frames, 40]``, float32,
``frames = 1 + (samples - 400) // 160``.
"""
from __future__ import annotations

import io
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


class AudioError(ValueError):
    """A clip edgeq cannot turn into features; the message is one sentence for the user."""


@dataclass(frozen=True)
class Features:
    sample_rate: int = 16000
    window: int = 400        # samples (25 ms)
    hop: int = 160           # samples (10 ms)
    n_fft: int = 512
    n_mels: int = 40
    f_min: float = 20.0
    f_max: float = 7600.0
    floor: float = 1e-6
    silence_dbfs: float = -50.0   # a clip whose peak is below this is refused as silent

    def to_dict(self) -> dict:
        return {"kind": "log-mel", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "Features":
        return cls(**{k: v for k, v in data.items() if k != "kind"})

    def frames(self, samples: int) -> int:
        return 0 if samples < self.window else 1 + (samples - self.window) // self.hop

    def seconds(self, frames: int) -> float:
        return ((frames - 1) * self.hop + self.window) / self.sample_rate


DEFAULT = Features()


def mel_filters(f: Features = DEFAULT) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular HTK-mel filters."""
    def to_mel(hz):
        return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)

    def to_hz(mel):
        return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)

    edges = to_hz(np.linspace(to_mel(f.f_min), to_mel(f.f_max), f.n_mels + 2))
    bins = np.fft.rfftfreq(f.n_fft, 1.0 / f.sample_rate)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def log_mel(audio: np.ndarray, f: Features = DEFAULT) -> np.ndarray:
    """``[frames, n_mels]`` float32 features of a mono float clip at ``f.sample_rate`` (values in [-1, 1])."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    count = f.frames(len(audio))
    if count < 1:
        raise AudioError(f"the clip is {len(audio) / f.sample_rate * 1000:.0f} ms long, shorter than one "
                         f"{f.window / f.sample_rate * 1000:.0f} ms analysis window.")
    index = np.arange(f.window)[None, :] + f.hop * np.arange(count)[:, None]
    frames = audio[index] * np.hanning(f.window + 2)[1:-1].astype(np.float32)   # Hann without its zero ends
    power = np.abs(np.fft.rfft(frames, n=f.n_fft, axis=1)) ** 2
    mel = np.log(power.astype(np.float32) @ mel_filters(f).T + f.floor)
    return (mel - mel.mean(axis=0, keepdims=True)).astype(np.float32)


def read_wav(path: str | Path) -> tuple[np.ndarray, int, int]:
    """(float32 samples [frames, channels] in [-1, 1], sample rate, channels) of a PCM WAV file."""
    try:
        with wave.open(str(path), "rb") as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError, OSError) as exc:
        raise AudioError(f"{path} is not a readable PCM WAV file ({exc}).") from None
    return _pcm(raw, width, channels, path), rate, channels


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """A 16-bit mono PCM WAV file holding ``audio`` (float in [-1, 1])."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def _pcm(raw: bytes, width: int, channels: int, path) -> np.ndarray:
    if width == 1:
        data = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        data = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 4:
        data = np.frombuffer(raw, "<i4").astype(np.float32) / 2147483648.0
    else:
        raise AudioError(f"{path} has {8 * width}-bit samples; edgeq reads 8-, 16- and 32-bit PCM WAV.")
    return data.reshape(-1, channels)


def prepare_clip(audio: np.ndarray, rate: int, source: str, f: Features = DEFAULT) -> np.ndarray:
    """A mono clip at ``f.sample_rate``: several channels are mixed down, another sample rate is resampled
    (needs scipy); an empty or silent clip is refused."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2 and audio.shape[1] > 1:
        audio = audio.mean(axis=1)
    audio = audio.reshape(-1)
    if audio.size == 0:
        raise AudioError(f"{source} is empty (no samples).")
    peak = float(np.abs(audio).max())
    if peak == 0 or 20 * np.log10(peak) < f.silence_dbfs:
        level = "digital silence" if peak == 0 else f"peak {20 * np.log10(peak):.0f} dBFS"
        raise AudioError(f"{source} is silent ({level}, below {f.silence_dbfs:.0f} dBFS); nothing to recognise.")
    if rate != f.sample_rate:
        audio = resample(audio, rate, f.sample_rate, source)
    return audio


def resample(audio: np.ndarray, rate: int, target: int, source: str = "the clip") -> np.ndarray:
    if rate < 4000 or rate > 192000:
        raise AudioError(f"{source} has a sample rate of {rate} Hz; edgeq resamples 4–192 kHz audio to "
                         f"{target} Hz.")
    try:
        from scipy.signal import resample_poly
    except ImportError:
        raise AudioError(f"{source} is {rate} Hz and resampling to {target} Hz needs scipy "
                         f"(pip install scipy), or convert the clip to {target} Hz first.") from None
    step = np.gcd(rate, target)
    return resample_poly(audio, target // step, rate // step).astype(np.float32)


def clip_features(path: str | Path, f: Features = DEFAULT, max_frames: int | None = None) -> np.ndarray:
    """Features of one WAV file, with every problem said in one sentence."""
    audio, rate, _ = read_wav(path)
    feats = log_mel(prepare_clip(audio, rate, str(path), f), f)
    if max_frames is not None and len(feats) > max_frames:
        raise AudioError(f"{path} is {f.seconds(len(feats)):.1f} s long; the model takes at most "
                         f"{f.seconds(max_frames):.1f} s ({max_frames} frames). Cut it into shorter clips.")
    return feats
