"""The bundled zoo: timm hybrids trained on Fashion-MNIST by ``scripts/train_zoo.py``, and a Conformer-CTC
speech encoder trained on synthesised spoken digits by ``scripts/train_speech.py``.

Checkpoints and a compact copy of the data (a 1,024-image calibration subset and the
10k test set, as uint8) ship inside the package so nothing needs the Debian package
or the network at run time.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ZOO_DIR = Path(__file__).resolve().parent
FASHION_MEAN = (0.2860,)
FASHION_STD = (0.3530,)
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat",
                   "sandal", "shirt", "sneaker", "bag", "ankle-boot")


class _Trained:
    """A zoo model's files: the checkpoint and, next to it, its training record (accuracy, time, seed)."""
    name: str

    @property
    def checkpoint(self) -> Path:
        return ZOO_DIR / f"{self.name}.pt"

    @property
    def card(self) -> Path:
        return ZOO_DIR / f"{self.name}.json"

    def training_record(self) -> dict:
        return json.loads(self.card.read_text()) if self.card.exists() else {}


@dataclass(frozen=True)
class ZooEntry(_Trained):
    name: str
    timm_name: str
    input_size: int = 32
    in_chans: int = 1
    num_classes: int = 10
    timm_kwargs: dict = field(default_factory=dict)
    epochs: int = 5
    lr: float = 2e-3
    batch_size: int = 128

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.in_chans, self.input_size, self.input_size)

    def create_kwargs(self) -> dict:
        kwargs = dict(num_classes=self.num_classes, in_chans=self.in_chans)
        kwargs.update(self.timm_kwargs)
        return kwargs


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry("mobilevit_xxs", "mobilevit_xxs", epochs=5),
        ZooEntry("edgenext_xx_small", "edgenext_xx_small", epochs=7),
        ZooEntry("levit_128s", "levit_128s", epochs=5, timm_kwargs={"img_size": 32}),
    )
}


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 28, 28] and int64 labels of the bundled 'calib' or 'test' split."""
    path = ZOO_DIR / "data" / f"fashion_mnist_{split}.npz"
    with np.load(path) as data:
        return data["images"], data["labels"].astype(np.int64)


@dataclass(frozen=True)
class SpeechEntry(_Trained):
    """A speech model of the zoo: plain-torch Conformer-CTC on log-mel features (``edgeq.audio``)."""
    name: str
    charset: str = "digits.txt"   # CTC symbols in class order after the blank (class 0)

    @property
    def charset_path(self) -> Path:
        return ZOO_DIR / "data" / self.charset

    def build(self):
        from .conformer import ConformerCTC
        return ConformerCTC()


SPEECH_ZOO: dict[str, SpeechEntry] = {e.name: e for e in (SpeechEntry("conformer_ctc_s"),)}
SPEECH_METRIC = "ctc-seq"   # the speech sets' default metric: the digit string decoded exactly


def load_speech_split(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log-mel features [N, T_max, 40] (float32, zero-padded), lengths [N] and transcripts [N] of the bundled
    spoken-digit 'calib' (training voices) or 'test' (held-out voices) split."""
    with np.load(ZOO_DIR / "data" / f"speech_{split}.npz") as data:
        return data["x"].astype(np.float32), data["lengths"].astype(np.int64), data["labels"].astype(str)
