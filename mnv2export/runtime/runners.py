"""What a loaded artifact is: a :class:`Runner` that takes a float32 NCHW batch and returns float32 logits, whatever
its format (one subclass per engine: :class:`TorchRunner`, :class:`OnnxRunner`), and the providers it may run on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from ..export.names import INPUT_NAME, OUTPUT_NAME
from ..params import is_int

PROVIDERS = ("cpu", "cuda", "tensorrt")  # what an artifact loads for
# what `check` compares and `--provider all` means; TensorRT runs only when named (its engines build for minutes)
CHECKED_PROVIDERS = ("cpu", "cuda")
NO_GPU_HINT = "run on a machine with an NVIDIA GPU and onnxruntime-gpu, or use {providers} cpu"


def check_load_options(provider: str, threads: int | None) -> None:
    """What every loader takes, checked before any file is read: a known provider, a thread count >= 1 or None."""
    if provider not in PROVIDERS:  # in words, not as a flag: check and bench name their own option before this
        raise ConfigError(f"unknown provider {provider!r}", hint=f"choose one of {', '.join(PROVIDERS)}")
    if threads is not None and not (is_int(threads) and threads >= 1):
        raise ConfigError(f"threads = {threads!r} is out of range", hint="use a whole number >= 1")


@dataclass
class Runner:
    """A loaded artifact. ``provider`` is what it really runs on (checked after loading)."""

    path: Path
    format: str  # "pytorch" (checkpoint, eager), "torchscript" or "onnx"
    precision: str  # "fp32", "int8" or "fp16"
    provider: str  # "cpu", "cuda" or "tensorrt"
    metadata: dict[str, Any] = field(repr=False)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.metadata["input_size"]
        return int(c), int(h), int(w)

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["class_names"])

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._run(self._check(batch))

    __call__ = run

    def _check(self, batch: np.ndarray) -> np.ndarray:
        if (
            not isinstance(batch, np.ndarray)
            or batch.ndim != 4
            or batch.shape[0] < 1
            or tuple(batch.shape[1:]) != self.input_shape
        ):
            shape = getattr(batch, "shape", type(batch).__name__)
            raise DataError(
                f"input batch has shape {shape}, the model takes N x {' x '.join(map(str, self.input_shape))}",
                path=self.path,
                hint="preprocess images with mnv2export.runtime.preprocess",
            )
        return np.ascontiguousarray(batch, dtype=np.float32)

    def _run(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    @staticmethod
    def _in_chunks(batch: np.ndarray, size: int, run_chunk) -> np.ndarray:
        """``run_chunk`` over ``batch`` in pieces of at most ``size`` images, joined: for runtimes whose compiled batch
        range ends at ``size`` (.pt2, .pte)."""
        if len(batch) <= size:
            return run_chunk(batch)
        return np.concatenate([run_chunk(batch[i : i + size]) for i in range(0, len(batch), size)])


@dataclass
class TorchRunner(Runner):
    module: Any = field(default=None, repr=False)  # nn.Module or torch.jit.ScriptModule, eval mode
    device: Any = None  # torch.device

    def _run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(batch).to(self.device)
        with torch.inference_mode():
            y = self.module(x)
        return y.float().cpu().numpy()


@dataclass
class OnnxRunner(Runner):
    session: Any = field(default=None, repr=False)  # onnxruntime.InferenceSession
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run([self.output_name], {self.input_name: batch})[0], dtype=np.float32)
