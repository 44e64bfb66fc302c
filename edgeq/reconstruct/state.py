"""Resume state of a reconstruction run: written atomically after every region, removed on success.

It lives next to the bundle being written (``OUT.resume/``) and holds, for every finished region,
its hard integer weights, its learned activation quantizers and its report. A key derived from the
model, recipe, seed, calibration data and region plan makes sure it is only resumed by the same run.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from ..errors import OutputError

STATE_FILE = "state.pt"


def resume_dir(out: str | os.PathLike) -> Path:
    return Path(str(out) + ".resume")


def run_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class ResumeState:
    def __init__(self, folder: Path, key: str):
        self.folder, self.key = folder, key
        self.data = {"key": key, "regions": [], "weights": {}, "acts": {}}

    def load(self) -> bool:
        """True when a saved state of this very run was found (and loaded)."""
        path = self.folder / STATE_FILE
        if not path.is_file():
            return False
        try:
            data = torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged state is reported, not trusted
            raise OutputError(f"the saved state in {self.folder} is unreadable; rerun with --force "
                              f"to start over.") from None
        if data.get("key") != self.key:
            raise OutputError(f"the saved state in {self.folder} belongs to a different model, recipe, seed or "
                              f"calibration set; rerun with --force to start over.")
        self.data = data
        return True

    @property
    def regions_done(self) -> int:
        return len(self.data["regions"])

    def record(self, report: dict, weights: dict[str, torch.Tensor], acts: dict[str, dict]) -> None:
        self.data["regions"].append(report)
        self.data["weights"].update({k: v.cpu() for k, v in weights.items()})
        self.data["acts"].update(acts)
        try:
            self.folder.mkdir(exist_ok=True)
            tmp = self.folder / (STATE_FILE + ".tmp")
            torch.save(self.data, tmp)
            os.replace(tmp, self.folder / STATE_FILE)
        except OSError as exc:
            raise OutputError(f"cannot write the resume state in {self.folder}: {exc.strerror or exc}.") from None

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
