"""Model inputs and outputs as every stage passes them: several inputs, several outputs, variable lengths.

``Samples`` holds N samples: one array per model input, batch first. When a dynamic axis makes samples
differ in length (speech frames, text-line widths) they are stored padded together with each sample's
true length, and every run groups samples of equal length and crops them to it: no padding ever reaches
a model, so none reaches observer statistics, reconstruction losses or metrics.

Outputs are a list with one entry per model output (tuple, list and dict outputs are flattened in
torch's pytree order, the order the ONNX exporter uses): an array ``[N, ...]``, or a list of N per-sample
arrays where the shapes differ between samples (a variable-length model run at several lengths).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

# torch is imported inside the functions that use it: every runtime imports this module, and a process that
# only times exported files (the placement search's fresh-process check) should not pay torch's import.
Outputs = list


@dataclass
class Samples:
    inputs: tuple[np.ndarray, ...]      # one array per model input, [N, ...], padded along ``axis``
    lengths: np.ndarray | None = None   # int64 [N]: the true length of each sample along ``axis`` of input 0
    axis: int | None = None             # the variable axis of input 0, counted with the batch axis

    def __post_init__(self):
        self.inputs = tuple(self.inputs)

    def __len__(self) -> int:
        return len(self.inputs[0])

    @property
    def ragged(self) -> bool:
        return self.lengths is not None and len(np.unique(self.lengths)) > 1

    def take(self, index) -> "Samples":
        """A subset (slice or index array), keeping the lengths."""
        lengths = self.lengths[index] if self.lengths is not None else None
        return Samples(tuple(a[index] for a in self.inputs), lengths, self.axis)

    def groups(self, batch_size: int) -> Iterator[tuple[np.ndarray, tuple[np.ndarray, ...]]]:
        """(sample indices, input arrays) per batch; equal-length samples only, cropped to their length."""
        if self.lengths is None:
            for i in range(0, len(self), batch_size):
                yield np.arange(i, min(i + batch_size, len(self))), tuple(a[i: i + batch_size] for a in self.inputs)
            return
        order = np.argsort(self.lengths, kind="stable")
        for length in np.unique(self.lengths):
            same = order[self.lengths[order] == length]
            for i in range(0, len(same), batch_size):
                idx = same[i: i + batch_size]
                yield idx, self._cropped(idx, int(length))

    def _cropped(self, idx: np.ndarray, length: int) -> tuple[np.ndarray, ...]:
        first = np.take(self.inputs[0][idx], np.arange(length), axis=self.axis)
        return (np.ascontiguousarray(first), *(a[idx] for a in self.inputs[1:]))

    def uniform(self) -> "Samples":
        """Equal-length samples for the stages that stack them (reconstruction caches, sensitivity probes):
        the samples at least as long as the median length, cropped to it — real data, no padding."""
        if not self.ragged:
            if self.lengths is None:
                return self
            return Samples(self._cropped(np.arange(len(self)), int(self.lengths[0])))
        length = int(np.median(self.lengths))
        idx = np.flatnonzero(self.lengths >= length)
        return Samples(self._cropped(idx, length))

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for array in self.inputs:
            digest.update(np.ascontiguousarray(array).tobytes())
        if self.lengths is not None:
            digest.update(self.lengths.tobytes())
        return digest.hexdigest()

    def summary(self) -> dict:
        first = self.inputs[0]
        result = {"samples": len(self), "shape": list(first.shape[1:])}
        if first.dtype.kind == "f":
            result.update(mean=round(float(first.mean()), 4), std=round(float(first.std()), 4))
        if len(self.inputs) > 1:
            result["inputs"] = [{"shape": list(a.shape[1:]), "dtype": str(a.dtype)} for a in self.inputs]
        if self.lengths is not None:
            result["lengths"] = {"axis": self.axis, "min": int(self.lengths.min()), "max": int(self.lengths.max()),
                                 "distinct": int(len(np.unique(self.lengths)))}
        return result


def as_samples(value) -> Samples:
    if isinstance(value, Samples):
        return value
    if isinstance(value, np.ndarray):
        return Samples((value,))
    return Samples(tuple(value))


def flatten_outputs(value) -> list[torch.Tensor]:
    """A model's return value (tensor, tuple, list, dict, nested) as a flat list of tensors."""
    import torch
    leaves, _ = torch.utils._pytree.tree_flatten(value)
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


def output_names(value) -> list[str]:
    """Names for the flattened outputs: 'output' for one, else their pytree paths (dict keys, indices)."""
    import torch
    paths, _ = torch.utils._pytree.tree_flatten_with_path(value)
    tensors = [(path, leaf) for path, leaf in paths if isinstance(leaf, torch.Tensor)]
    if len(tensors) == 1:
        return ["output"]
    names = []
    for i, (path, _) in enumerate(tensors):
        name = "_".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path) or f"output_{i}"
        names.append(name if name[0].isalpha() else f"output_{name}")
    return names


def run_batches(fn: Callable[[tuple], list[np.ndarray]], samples, batch_size: int,
                fixed_batch: int | None = None) -> Outputs:
    """``fn`` (input arrays of one batch → output arrays) over all samples, outputs back in sample order.

    ``fixed_batch``: the model only takes this batch size; short batches are padded by repeating the last
    sample and the extra outputs dropped.
    """
    samples = as_samples(samples)
    pieces = []
    for idx, arrays in samples.groups(fixed_batch or batch_size):
        n = len(idx)
        if fixed_batch and n != fixed_batch:
            arrays = tuple(np.concatenate([a, np.repeat(a[-1:], fixed_batch - n, axis=0)]) for a in arrays)
        pieces.append((idx, [np.asarray(o)[:n] for o in fn(arrays)]))
    return _assemble(pieces, len(samples))


def _assemble(pieces: list, n: int) -> Outputs:
    order = np.concatenate([idx for idx, _ in pieces])
    outputs = []
    for k in range(len(pieces[0][1])):
        parts = [outs[k] for _, outs in pieces]
        if len({p.shape[1:] for p in parts}) == 1:
            stacked = np.concatenate(parts)
            result = np.empty_like(stacked)
            result[order] = stacked
            outputs.append(result)
        else:
            per_sample: list = [None] * n
            for (idx, outs) in pieces:
                for j, i in enumerate(idx):
                    per_sample[i] = outs[k][j]
            outputs.append(per_sample)
    return outputs


def run_graph(gm: torch.fx.GraphModule, samples, batch_size: int) -> Outputs:
    """The captured (fake-quant or float) graph on ``samples`` in torch, without gradients."""
    import torch

    def forward(arrays):
        return [t.detach().cpu().numpy() for t in flatten_outputs(gm(*[torch.from_numpy(a) for a in arrays]))]
    with torch.no_grad():
        return run_batches(forward, samples, batch_size)
