"""Synthesise the spoken-digit data and train the speech zoo model (zoo:conformer_ctc_s), deterministically, on CPU.

    python scripts/train_speech.py synth      # espeak-ng → /tmp/edgeq-speech/*.npz (a few minutes)
    python scripts/train_speech.py train      # → edgeq/models/zoo/conformer_ctc_s.{pt,json} and data/speech_*.npz
    python scripts/train_speech.py real       # the real-speech sanity check, added to the training record

Task: connected digit strings (one to five of "zero" … "nine"), spoken by Debian's espeak-ng 1.51 in seven
English accents × many voice variants, at random speeds, pitches and word gaps, with white noise at 5–30 dB
SNR, random gain and leading/trailing silence, resampled to 16 kHz. The test set's voice variants are never
heard in training or calibration ("held-out voices"). Features: ``edgeq.audio.log_mel``, the function edgeq
itself uses. Labels: the digit string ("2934"); CTC classes: blank + the ten digits (charset digits.txt).
"""
from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from edgeq import audio  # noqa: E402

WORK = Path("/tmp/edgeq-speech")
ZOO = ROOT / "edgeq" / "models" / "zoo"
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
TRAIN_VOICES = ("m1", "m2", "m3", "m4", "m5", "m6", "f1", "f2", "f3", "klatt", "klatt2", "klatt4",
                "Andy", "Annie", "boris", "david", "linda", "max", "paul", "robert")
HELD_OUT_VOICES = ("m7", "f4", "f5", "klatt3", "Alex", "john", "steph")
SPLITS = {"train": (8000, TRAIN_VOICES, 1), "calib": (256, TRAIN_VOICES, 2), "test": (1000, HELD_OUT_VOICES, 3)}
SEED = 0


def synthesise(text: str, voice: str, rng: np.random.Generator) -> np.ndarray:
    """One utterance at 16 kHz with the split's randomisation (speed, pitch, gap, noise, gain, silence)."""
    command = ["espeak-ng", "-v", voice, "-s", str(rng.integers(120, 221)), "-p", str(rng.integers(20, 81)),
               "-g", str(rng.integers(0, 8)), "--stdout", text]
    wav = subprocess.run(command, check=True, capture_output=True).stdout
    with open(WORK / "tmp.wav", "wb") as handle:
        handle.write(wav)
    samples, rate, _ = audio.read_wav(WORK / "tmp.wav")
    clip = audio.resample(samples[:, 0], rate, 16000)
    clip = np.concatenate([np.zeros(int(rng.uniform(0.05, 0.4) * 16000), np.float32), clip,
                           np.zeros(int(rng.uniform(0.05, 0.4) * 16000), np.float32)])
    speech_rms = math.sqrt(float(np.mean(clip ** 2)) + 1e-12)
    snr_db = rng.uniform(5, 30)
    clip = clip + rng.standard_normal(len(clip)).astype(np.float32) * speech_rms / 10 ** (snr_db / 20)
    return (clip / np.abs(clip).max() * rng.uniform(0.1, 0.9)).astype(np.float32)


def synth_split(name: str) -> None:
    count, voices, stream = SPLITS[name]
    rng = np.random.default_rng([SEED, stream])
    feats, labels, voice_names = [], [], []
    for i in range(count):
        digits = "".join(str(d) for d in rng.integers(0, 10, rng.integers(1, 6)))
        voice = f"{ACCENTS[rng.integers(len(ACCENTS))]}+{voices[rng.integers(len(voices))]}"
        clip = synthesise(" ".join(WORDS[int(d)] for d in digits), voice, rng)
        if name == "test" and i < 8:   # a few real files for the audio-input path
            (WORK / "wav").mkdir(exist_ok=True)
            (WORK / "wav" / f"{i:02d}_{digits}.wav").write_bytes(audio.wav_bytes(clip, 16000))
        feats.append(audio.log_mel(clip))
        labels.append(digits)
        voice_names.append(voice)
    save_padded(WORK / f"{name}.npz", feats, labels, voice_names)
    print(f"{name}: {count} clips, {sum(len(f) for f in feats) / 100 / 60:.1f} min of audio")


def save_padded(path: Path, feats: list, labels: list, voices: list) -> None:
    lengths = np.array([len(f) for f in feats], np.int64)
    x = np.zeros((len(feats), lengths.max(), feats[0].shape[1]), np.float16)
    for i, f in enumerate(feats):
        x[i, : len(f)] = f
    np.savez_compressed(path, x=x, lengths=lengths, labels=np.array(labels), voices=np.array(voices))


def load_padded(path: Path):
    with np.load(path) as data:
        return data["x"].astype(np.float32), data["lengths"], [str(s) for s in data["labels"]]


# ---- training -------------------------------------------------------------------------------------------

def batches(lengths: np.ndarray, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Length-sorted batches (little padding), in random order."""
    order = np.argsort(lengths + rng.uniform(0, 8, len(lengths)), kind="stable")
    groups = [order[i: i + batch] for i in range(0, len(order), batch)]
    return [groups[i] for i in rng.permutation(len(groups))]


def spec_augment(x, gen):
    """Two frequency masks (≤ 6 bands) and two time masks (≤ 15 frames) per batch."""
    import torch
    x = x.clone()
    for _ in range(2):
        f0, fw = torch.randint(0, 34, (1,), generator=gen).item(), torch.randint(0, 7, (1,), generator=gen).item()
        x[:, :, f0: f0 + fw] = 0
        t0 = torch.randint(0, max(1, x.shape[1] - 15), (1,), generator=gen).item()
        x[:, t0: t0 + torch.randint(0, 16, (1,), generator=gen).item()] = 0
    return x


def decode(logits) -> list[str]:
    from edgeq.ctc import greedy_decode
    return ["".join(str(i - 1) for i in ids) for ids in greedy_decode(logits.detach().numpy(), blank=0)]


def evaluate(model, x, lengths, labels) -> dict:
    import torch
    model.eval()
    hyps = []
    with torch.no_grad():
        for i in range(len(x)):   # one clip at its own length, as deployed
            hyps += decode(model(torch.from_numpy(x[i: i + 1, : lengths[i]])))
    from edgeq.ctc import error_rate
    return {"sequence_accuracy": round(100 * float(np.mean([h == r for h, r in zip(hyps, labels)])), 2),
            "digit_error_rate": round(error_rate(hyps, labels), 2)}


def train(epochs: int = 14, batch: int = 32, lr: float = 2e-3) -> dict:
    import torch
    import torch.nn.functional as F
    from edgeq.models.zoo.conformer import ConformerCTC, subsampled_lengths
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    xtr, ltr, ytr = load_padded(WORK / "train.npz")
    xte, lte, yte = load_padded(WORK / "test.npz")
    model = ConformerCTC()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    rng, gen = np.random.default_rng(SEED), torch.Generator().manual_seed(SEED)
    steps = epochs * math.ceil(len(xtr) / batch)
    schedule = lambda s: min(1.0, (s + 1) / 300) * 0.5 * (1 + math.cos(math.pi * s / steps))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    start, step = time.time(), 0
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for idx in batches(ltr, batch, rng):
            width = int(ltr[idx].max())
            x = spec_augment(torch.from_numpy(xtr[idx, :width]), gen)
            lengths = torch.from_numpy(ltr[idx])
            targets = [torch.tensor([int(c) + 1 for c in ytr[i]]) for i in idx]
            log_probs = model(x, lengths).log_softmax(-1).transpose(0, 1)     # [T, B, C]
            loss = F.ctc_loss(log_probs, torch.cat(targets), subsampled_lengths(lengths),
                              torch.tensor([len(t) for t in targets]), blank=0, zero_infinity=True)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            total, step = total + loss.item(), step + 1
        scores = evaluate(model, xte[:200], lte[:200], yte[:200])
        print(f"epoch {epoch + 1}/{epochs}: loss {total / math.ceil(len(xtr) / batch):.3f}, test[:200] {scores}, "
              f"{time.time() - start:.0f} s", flush=True)
    seconds = time.time() - start
    model.eval()
    return {"model": model, "seconds": seconds, "test": evaluate(model, xte, lte, yte), "epochs": epochs,
            "batch_size": batch, "lr": lr}


def ship(result: dict) -> None:
    """Checkpoint, training record and the compact calibration / test data, like the vision zoo."""
    import shutil
    import torch
    model = result["model"]
    torch.save(model.state_dict(), ZOO / "conformer_ctc_s.pt")
    record = {"model": "conformer_ctc_s", "params": sum(p.numel() for p in model.parameters()),
              "task": "connected spoken digits (1-5), CTC over blank + 10 digits",
              "epochs": result["epochs"], "batch_size": result["batch_size"], "lr": result["lr"], "seed": SEED,
              "train_clips": SPLITS["train"][0], "test_clips_held_out_voices": SPLITS["test"][0],
              **{f"test_{k}_torch": v for k, v in result["test"].items()},
              "train_seconds": round(result["seconds"]), "torch": torch.__version__,
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
              "features": audio.DEFAULT.to_dict(),
              "dataset": "synthesised with Debian espeak-ng 1.51 (GPL-3+ program; its output is not covered), "
                         "scripts/train_speech.py"}
    (ZOO / "conformer_ctc_s.json").write_text(json.dumps(record, indent=2) + "\n")
    for split in ("calib", "test"):
        shutil.copy(WORK / f"{split}.npz", ZOO / "data" / f"speech_{split}.npz")
    target = ZOO / "data" / "speech_wav"
    target.mkdir(exist_ok=True)
    for wav in sorted((WORK / "wav").glob("*.wav")):
        shutil.copy(wav, target / wav.name)
    print(json.dumps(record, indent=2))


# Real recordings: TIDIGITS utterances in Debian's pocketsphinx-testdata (raw 16 kHz 16-bit mono PCM).
REAL = {"/usr/share/pocketsphinx/test/data/tidigits/dhd.2934z.raw": "29340"}


def real_speech() -> dict:
    """Decode the real recordings with the shipped checkpoint; the record says what was heard."""
    import torch
    from edgeq.models.zoo.conformer import ConformerCTC
    model = ConformerCTC()
    model.load_state_dict(torch.load(ZOO / "conformer_ctc_s.pt", weights_only=True))
    model.eval()
    heard = {}
    for path, truth in REAL.items():
        samples = np.fromfile(path, "<i2").astype(np.float32) / 32768.0
        feats = audio.log_mel(audio.prepare_clip(samples, 16000, path))
        with torch.no_grad():
            heard[Path(path).name] = {"said": truth, "heard": decode(model(torch.from_numpy(feats[None])))[0]}
    record = json.loads((ZOO / "conformer_ctc_s.json").read_text())
    record["real_speech_sanity"] = {"source": "Debian pocketsphinx-testdata (TIDIGITS)", "clips": heard}
    (ZOO / "conformer_ctc_s.json").write_text(json.dumps(record, indent=2) + "\n")
    return heard


if __name__ == "__main__":
    WORK.mkdir(parents=True, exist_ok=True)
    if sys.argv[1:] == ["synth"]:
        for split_name in SPLITS:
            synth_split(split_name)
    elif sys.argv[1:2] == ["train"]:
        ship(train(*(int(a) for a in sys.argv[2:3])))
    elif sys.argv[1:] == ["real"]:
        print(real_speech())
    else:
        sys.exit(__doc__)
