"""Pack Fashion-MNIST (Debian package dataset-fashion-mnist, MIT) into the compact zoo data files.

Writes edgeq/models/zoo/data/fashion_mnist_{calib,test}.npz: a class-balanced 1,024-image
calibration subset of the training set (fixed seed) and the full 10k test set, as uint8.
"""
import gzip
import sys
from pathlib import Path

import numpy as np

SRC = Path("/usr/share/datasets/fashion-mnist")
DST = Path(__file__).resolve().parents[1] / "edgeq" / "models" / "zoo" / "data"


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path).read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_raw(split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    return (read_idx(SRC / f"{prefix}-images-idx3-ubyte.gz"),
            read_idx(SRC / f"{prefix}-labels-idx1-ubyte.gz"))


def calibration_indices(labels: np.ndarray, count: int = 1024, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(10)]
    picked = np.concatenate([idx[: count // 10 + 1] for idx in per_class])
    return np.sort(rng.permutation(picked)[:count])


def main() -> int:
    if not SRC.exists():
        print("Fashion-MNIST not found: apt-get install dataset-fashion-mnist", file=sys.stderr)
        return 2
    DST.mkdir(parents=True, exist_ok=True)
    train_x, train_y = load_raw("train")
    idx = calibration_indices(train_y)
    np.savez_compressed(DST / "fashion_mnist_calib.npz", images=train_x[idx], labels=train_y[idx])
    test_x, test_y = load_raw("test")
    np.savez_compressed(DST / "fashion_mnist_test.npz", images=test_x, labels=test_y)
    print(f"wrote {len(idx)} calibration and {len(test_y)} test images to {DST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
