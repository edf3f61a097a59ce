"""``mnv2 bench``: latency of every format (PyTorch eager, TorchScript, ONNX FP32 / INT8 / FP16) on every provider
(CPU, CUDA, TensorRT where installed) at the batch sizes asked for, honestly measured.

    from mnv2export import bench
    result = bench.run("export/run", formats="all", providers="cpu", batches=(1, 8, 32))
    result.rows, result.machine, result.to_dict(), result.to_csv(path), result.to_markdown(), result.plot(path)

Modules: ``sweep`` (run), ``sources`` (artifacts folder or checkpoint), ``targets`` (loading, input binding, GPU
memory), ``timing`` (the timed loop), ``stats`` (percentiles), ``machine`` (machine details, host memory),
``memory`` (will a row fit: its estimate against the memory left), ``placement`` (ONNX Runtime node placement),
``result`` / ``plot`` (the outputs).
"""

from __future__ import annotations

from ..runtime.runners import PROVIDERS
from .result import BenchResult, BenchRow
from .sources import FORMATS
from .stats import latency_stats, percentile
from .sweep import run

__all__ = ["FORMATS", "PROVIDERS", "BenchResult", "BenchRow", "latency_stats", "percentile", "run"]
