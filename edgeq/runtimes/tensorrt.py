"""TensorRT on an NVIDIA GPU: the ``tensorrt`` runtime runs ``edgeq export --to tensorrt`` folders.

NOT EXERCISED ON EDGEQ'S CI: ``tensorrt`` cannot be installed on these machines, so ``available()`` says so
and every caller reports "not measured" with that reason. Where it is installed, the folder's
``model.engine`` (built on the device by ``trtexec.sh``, or by ``edgeq export --to tensorrt`` there) is
deserialized and run with CUDA buffers from torch.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ..errors import ArtifactError
from .base import ArtifactForm, Runtime, Session


class TensorrtSession(Session):
    def __init__(self, folder: Path, batch: int | None, seed: int = 0):
        import tensorrt as trt
        import torch
        super().__init__()
        engine_path = folder / "model.engine"
        if not engine_path.is_file():
            raise ArtifactError(f"{folder} has no model.engine: run its trtexec.sh on this device first.")
        self.torch, self.batch, self.threads = torch, batch, None
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        shape = tuple(self.engine.get_tensor_shape(self.inputs[0]))
        self.fixed_batch = shape[0] if shape[0] > 0 else None
        self.input_info = [(n, [d if d > 0 else None for d in self.engine.get_tensor_shape(n)], "tensor(float)")
                           for n in self.inputs]
        dims = (batch or self.fixed_batch or 1, *shape[1:])
        self.feeds = [np.random.default_rng(seed).standard_normal(dims).astype(np.float32)]
        self.stream = torch.cuda.Stream()

    def infer(self, arrays) -> list[np.ndarray]:
        torch = self.torch
        buffers = []
        for name, array in zip(self.inputs, arrays):
            tensor = torch.from_numpy(np.ascontiguousarray(array)).cuda()
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
            buffers.append(tensor)
        results = []
        for name in self.outputs:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            results.append(out)
        self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return [r.cpu().numpy() for r in results]


class TensorrtRuntime(Runtime):
    name = "tensorrt"
    description = "TensorRT on an NVIDIA GPU (int8 + fp16 engine built on the device)"
    form = ArtifactForm("tensorrt", "int8")

    def available(self) -> str | None:
        if importlib.util.find_spec("tensorrt") is None:
            return "TensorRT is not installed here (it cannot be on edgeq's CI machines)"
        import torch
        if not torch.cuda.is_available():
            return "no CUDA device is visible"
        return None

    def versions(self) -> dict:
        import tensorrt as trt
        import torch
        return {"tensorrt": trt.__version__, "gpu": torch.cuda.get_device_name(0)}

    def open(self, artifact, batch: int | None = 1, threads: int | None = None, options: dict | None = None) -> Session:
        self.require()
        return TensorrtSession(Path(artifact), batch)


RUNTIME = TensorrtRuntime()
