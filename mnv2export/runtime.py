"""One way to load and run every artifact: ``load_artifact(path, provider) -> Runner``.

Formats are recognised by content, not by name: a checkpoint from ``mnv2 train`` (PyTorch eager), a TorchScript file
(``model.torchscript.pt``) or an ONNX model (FP32, INT8 or FP16; ``model*.onnx``). Every runner takes a float32
NCHW batch (normalised as the metadata says; see :func:`preprocess`) and returns float32 logits.

Providers: ``cpu``, ``cuda`` and (ONNX only) ``tensorrt``. There is no silent fallback: when a provider is asked for
and cannot be had, :class:`ProviderUnavailable` says why (no GPU or driver, CUDA/cuDNN libraries missing, a
CPU-only onnxruntime build, both onnxruntime and onnxruntime-gpu installed). On CUDA, ONNX Runtime may still place
single nodes it has no CUDA kernel for on the CPU (INT8 QDQ models do this): ``runner.session`` tells which.
TorchScript runs on CUDA by loading the file with ``map_location`` (freezing made the weights graph constants,
which ``map_location`` moves too).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import logging
import math
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactError, ConfigError, DataError, ProviderUnavailable, first_line
from .export.names import INPUT_NAME, ONNX_METADATA, OUTPUT_NAME, TORCHSCRIPT_METADATA
from .filekind import detect_format

log = logging.getLogger(__name__)

PROVIDERS = ("cpu", "cuda", "tensorrt")
ORT_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


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


# --------------------------------------------------------------------------------------------------- formats
def _load_onnx_model(p: Path, *, check: bool = True):
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(
            f"not a readable ONNX, TorchScript or checkpoint file ({type(exc).__name__})",
            path=p,
            hint="the file is truncated or of another kind; export it again",
        ) from None
    if check:
        _check_onnx_model(model, p)
    return model


def _check_onnx_model(model, p: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ArtifactError(
            f"ONNX model fails onnx.checker: {first_line(exc)}",
            path=p,
            hint="the file is truncated or damaged; export it again",
        ) from None


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata an artifact embeds (class names, mean/std, input size, format, precision...), without a session."""
    p = Path(path)
    kind = detect_format(p)
    if kind == "pytorch":
        return _checkpoint_metadata(_load_checkpoint(p))
    if kind == "onnx":
        return _onnx_metadata(_load_onnx_model(p, check=False), p)
    with zipfile.ZipFile(p) as z:  # TorchScript: the metadata is an extra file of the archive
        entry = next((n for n in z.namelist() if n.endswith(f"/extra/{TORCHSCRIPT_METADATA}")), None)
        raw = z.read(entry) if entry else None
    return _parse_metadata(raw, p, kind)


def _onnx_metadata(model, p: Path) -> dict[str, Any]:
    raw = next((prop.value for prop in model.metadata_props if prop.key == ONNX_METADATA), None)
    return _parse_metadata(raw, p, "onnx")


def _parse_metadata(raw: str | bytes | None, p: Path, kind: str) -> dict[str, Any]:
    if raw is None:
        raise ArtifactError("artifact carries no mnv2export metadata", path=p, hint="export it with `mnv2 export`")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArtifactError(
            "artifact metadata is not valid JSON", path=p, hint="export it again with `mnv2 export`"
        ) from None
    if not isinstance(meta, dict):
        raise ArtifactError(
            f"artifact metadata is a JSON {type(meta).__name__}, not an object",
            path=p,
            hint="export it again with `mnv2 export`",
        )
    missing = [k for k in ("input_size", "class_names", "mean", "std", "data_config") if k not in meta]
    if missing:
        raise ArtifactError(
            f"artifact metadata lacks {', '.join(missing)}", path=p, hint="export it again with `mnv2 export`"
        )
    problems = metadata_value_problems(meta)
    if problems:
        raise ArtifactError(
            f"artifact metadata is not valid: {'; '.join(problems)}", path=p, hint="export it again with `mnv2 export`"
        )
    meta.setdefault("format", kind)
    meta.setdefault("precision", "fp32")
    return meta


def metadata_value_problems(meta: dict[str, Any]) -> list[str]:
    """What is wrong with the values an artifact's metadata holds (the keys are there): every reader (``predict``,
    ``check``, ``bench``, ``info``) trusts these, so a hand-edited value is named here, not met later as a crash."""

    from .params import is_number as _is_number

    def whole(v: Any) -> bool:
        return _is_number(v) and isinstance(v, int) and v > 0

    def number(v: Any) -> bool:
        return _is_number(v) and math.isfinite(v)

    problems = []
    size, names = meta["input_size"], meta["class_names"]
    if not (isinstance(size, list) and len(size) == 3 and all(whole(v) for v in size) and size[0] == 3):
        problems.append(f"input_size {json.dumps(size)} (expected [3, H, W], H and W whole numbers > 0)")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        problems.append("class_names is not a non-empty list of names")
    elif "num_classes" in meta and meta["num_classes"] != len(names):
        problems.append(f"num_classes {json.dumps(meta['num_classes'])} but {len(names)} class_names")
    for key in ("mean", "std"):
        v = meta[key]
        if not (
            isinstance(v, list)
            and len(v) == 3
            and all(number(x) for x in v)
            and (key == "mean" or all(x > 0 for x in v))
        ):
            problems.append(f"{key} {json.dumps(v)} (expected 3 numbers{', each > 0' if key == 'std' else ''})")
    if not isinstance(meta["data_config"], dict):
        problems.append("data_config is not an object")
    for key in ("input_name", "output_name"):
        if key in meta and not (isinstance(meta[key], str) and meta[key]):
            problems.append(f"{key} {json.dumps(meta[key])} is not a name")
    return problems


def _load_checkpoint(p: Path):
    from .checkpoint import load_checkpoint
    from .errors import CheckpointError

    try:
        return load_checkpoint(p)
    except CheckpointError as exc:
        raise ArtifactError(exc.what, path=p, hint=exc.hint) from None


def _checkpoint_metadata(ckpt) -> dict[str, Any]:
    return {**ckpt.metadata(), "format": "pytorch", "precision": "fp32"}


def preprocess(paths: list[str | Path], metadata: dict[str, Any]) -> tuple[np.ndarray, list[str], list[Any]]:
    """Decode image files into the batch a runner takes, with the artifact's own validation preprocessing.

    Returns (batch float32 N x 3 x H x W, paths kept, ImageReadError for each image that could not be read). Pillow
    and NumPy only (:mod:`mnv2export.imaging`, held equal to torchvision's eval transform by its tests), so that an
    ONNX file runs on an install without torch.
    """
    from .config import DataConfig
    from .imaging import load_batch

    return load_batch(list(paths), DataConfig.from_dict(metadata["data_config"]))


# --------------------------------------------------------------------------------------------------- loading
def load_artifact(
    path: str | Path, provider: str = "cpu", *, threads: int | None = None, cuda_graph: bool = False
) -> Runner:
    """Load ``path`` to run on ``provider`` (``cpu``, ``cuda``, ``tensorrt``); ``threads``: intra-op threads
    (ONNX Runtime's session option; for PyTorch ``torch.set_num_threads``, which is process-wide). ``cuda_graph``: an
    ONNX file's session on the CUDA provider with CUDA graphs (:func:`ort_providers`), to be run through I/O binding."""
    if provider not in PROVIDERS:
        raise ConfigError(f"unknown provider {provider!r}", hint=f"choose one of {', '.join(PROVIDERS)}")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ConfigError(f"threads = {threads!r} is out of range", hint="use a whole number >= 1")
    p = Path(path)
    kind = detect_format(p)
    if cuda_graph and kind != "onnx":  # before a checkpoint is loaded for nothing
        raise ConfigError(
            f"CUDA graphs are timed for ONNX files only, not {kind}", path=p, hint="ask for them with an ONNX artifact"
        )
    ckpt = _load_checkpoint(p) if kind == "pytorch" else None
    if kind == "onnx":
        model = _load_onnx_model(p, check=False)  # parsed once: metadata here, the checker in create_session
        meta = _onnx_metadata(model, p)
        session, used = create_session(
            p, provider, threads=threads, model=model, cuda_graph=cuda_graph
        )  # onnx.checker first, then the session
        validate_artifact(kind, p, meta, onnx_model=model)
        return OnnxRunner(
            path=p,
            format="onnx",
            precision=meta["precision"],
            provider=used,
            metadata=meta,
            session=session,
            input_name=meta.get("input_name", INPUT_NAME),
            output_name=meta.get("output_name", OUTPUT_NAME),
        )
    meta = _checkpoint_metadata(ckpt) if ckpt is not None else read_metadata(p)
    if provider == "tensorrt":
        raise ConfigError(
            "the tensorrt provider runs ONNX models only", path=p, hint="use --provider cuda for PyTorch / TorchScript"
        )
    import torch

    from .device import resolve_device

    device = resolve_device(
        provider, flag="--provider"
    )  # ProviderUnavailable (with the reason) when cuda is asked for and absent
    if threads is not None:
        torch.set_num_threads(threads)
    if ckpt is not None:
        module = ckpt.build_model().to(device).eval()
    else:
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in torch 2.14 but works
                module = torch.jit.load(str(p), map_location=device).eval()
        except (RuntimeError, ValueError, OSError, zipfile.BadZipFile) as exc:
            raise ArtifactError(
                f"TorchScript file cannot be loaded: {first_line(exc)}",
                path=p,
                hint="the file is truncated or damaged; export it again",
            ) from None
        validate_artifact(kind, p, meta, module=module)
    return TorchRunner(
        path=p, format=kind, precision="fp32", provider=device.type, metadata=meta, module=module, device=device
    )


def validate_artifact(kind: str, p: Path, meta: dict[str, Any], *, onnx_model=None, module=None) -> None:
    """The checks of an exported file against its own metadata, the same for every command that loads one (``predict``,
    ``check``, ``bench`` through :func:`load_artifact`; ``info``, which makes no session, directly), so that what one
    refuses no other runs: the graph's input and output (:func:`check_onnx_signature`), or the TorchScript program's
    (:func:`check_torchscript_signature`), and the weights against the metadata's ``model_config``
    (:func:`check_model_config`): a foreign model carrying metadata copied from an export is refused. ``onnx_model``:
    the parsed ``onnx.ModelProto``; ``module``: the loaded TorchScript module. A checkpoint builds its model from its
    own config and loads its weights strictly: nothing more to check."""
    if kind == "onnx":
        check_onnx_signature(onnx_model, meta, p)
        kernels = onnx_initializer_counts(onnx_model)["kernels"]
    elif kind == "torchscript":
        check_torchscript_signature(module, meta, p)
        kernels = torchscript_constants(module)[1]
    else:
        return
    check_model_config(meta, kernels, p)


def check_model_config(meta: dict[str, Any], kernels: int, p: Path) -> None:
    """An :class:`ArtifactError` unless the file's ``kernels`` (elements of its weights of rank 2 or more) are those of
    the network the metadata's ``model_config`` describes: convolution and linear kernels are exported as they are
    (folding scales them). Biases are not compared: a bias folded from an untrained BatchNorm is all zeros, and the
    exporters leave such a bias out. The network's kernel sizes are computed from the config, without torch
    (:func:`mnv2export.architecture.kernel_params`, held equal to the torch model's by tests/test_architecture.py)."""
    from .architecture import kernel_params
    from .config import ModelConfig
    from .errors import Mnv2Error

    if not isinstance(meta.get("model_config"), dict):
        raise ArtifactError("artifact metadata lacks model_config", path=p, hint="export it again with `mnv2 export`")
    try:
        cfg = ModelConfig.from_dict(meta["model_config"])
    except Mnv2Error as exc:
        raise ArtifactError(
            f"artifact metadata's model_config is not valid: {exc.what}",
            path=p,
            hint="export it again with `mnv2 export`",
        ) from None
    want = kernel_params(cfg)
    if kernels != want:
        raise ArtifactError(
            f"the model_config in the file's metadata does not describe its weights ({kernels:,} convolution and "
            f"linear kernel weights in the file, {want:,} in the model that model_config describes)",
            path=p,
            hint="the metadata was changed or belongs to another model: export it again with `mnv2 export`",
        )


def torchscript_constants(module) -> tuple[int, int]:
    """Parameters of a frozen TorchScript module: its state dict plus the tensor constants folded into the graph; and
    of those, the elements of tensors of rank 2 or more (the kernels)."""
    tensors = list(module.state_dict().values())
    for node in module.graph.nodes():
        out = node.output() if node.outputsSize() == 1 else None
        if node.kind() == "prim::Constant" and out is not None and out.type().kind() == "TensorType":
            tensors.append(out.toIValue())
    return sum(t.numel() for t in tensors), sum(t.numel() for t in tensors if t.dim() >= 2)


QUANT_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


def onnx_initializer_counts(model) -> dict[str, int]:
    """Elements of an ONNX model's initializers by role: ``weights`` (weights and biases, float or integer), of those
    ``kernels`` (rank 2 or more: convolution and linear kernels), ``quant`` (scales and zero points of Q/DQ nodes) and
    ``other`` (int64 shape constants, ReLU6's clip bounds and the like)."""
    import onnx

    consumers: dict[str, list[tuple[str, int]]] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node.op_type, i))
    counts = dict.fromkeys(("weights", "kernels", "quant", "other"), 0)
    for init in model.graph.initializer:
        n = math.prod(init.dims)
        uses = consumers.get(init.name, [])
        if uses and all(op in QUANT_OPS and i in (1, 2) for op, i in uses):
            counts["quant"] += n
        elif init.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.BOOL) or (
            uses and all(op == "Clip" and i > 0 for op, i in uses)
        ):
            counts["other"] += n
        else:
            counts["weights"] += n
            counts["kernels"] += n if len(init.dims) >= 2 else 0
    return counts


def check_onnx_signature(model, meta: dict[str, Any], p: Path) -> None:
    """An :class:`ArtifactError` where the graph of ``model`` (an ``onnx.ModelProto``) differs from what its metadata
    describes: one input named as the metadata says (``input``) of N x C x H x W with the metadata's input size, one
    output (``logits``) of N x num_classes; a fixed dimension must match, a symbolic one (the batch) may be anything.
    Read from the graph itself, so ``info`` checks it without a session."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    outputs = list(graph.output)
    in_name, out_name = meta.get("input_name", INPUT_NAME), meta.get("output_name", OUTPUT_NAME)
    want_in = [None, *meta["input_size"]]
    want_out = [None, meta.get("num_classes", len(meta["class_names"]))]
    problems = []
    if len(inputs) != 1 or inputs[0].name != in_name:
        problems.append(f"inputs {[i.name for i in inputs]} (the metadata says one named {in_name!r})")
    elif not _shape_fits(_dims(inputs[0]), want_in):
        problems.append(f"input shape {_dims(inputs[0])} (the metadata says N x {' x '.join(map(str, want_in[1:]))})")
    if len(outputs) != 1 or outputs[0].name != out_name:
        problems.append(f"outputs {[o.name for o in outputs]} (the metadata says one named {out_name!r})")
    elif not _shape_fits(_dims(outputs[0]), want_out):
        problems.append(f"output shape {_dims(outputs[0])} (the metadata says N x {want_out[1]})")
    if problems:
        raise ArtifactError(
            f"ONNX graph does not match its metadata: {'; '.join(problems)}",
            path=p,
            hint="export the model again with `mnv2 export`",
        )


def check_torchscript_signature(module, meta: dict[str, Any], p: Path) -> None:
    """A TorchScript file's ``forward`` takes one tensor (an :class:`ArtifactError` otherwise). Its name should be the
    metadata's ``input_name`` (a caller may pass the input by name): files exported before the name was set call it
    ``x`` (torchvision's argument); they run as before, with a warning for whoever calls them by name. The input size
    is not in the program (any size runs): the metadata's is taken."""
    args = [a.name for a in module.forward.schema.arguments if a.name != "self"]
    want = meta.get("input_name", INPUT_NAME)
    if len(args) != 1:
        raise ArtifactError(
            f"TorchScript program does not match its metadata: forward takes {args} (the metadata says one input "
            f"named {want!r})",
            path=p,
            hint="export the model again with `mnv2 export`",
        )
    if args[0] != want:
        log.warning(
            "%s: forward's input is named %r, its metadata says %r (an older export): pass the input by position, "
            "or export the model again",
            p,
            args[0],
            want,
        )


def _dims(value_info) -> list[Any]:
    """A value's shape: a fixed dimension as an int, a symbolic one as its name, an unknown one as None."""
    dims = value_info.type.tensor_type.shape.dim
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param if d.HasField("dim_param") else None) for d in dims
    ]


def _shape_fits(shape: list[Any], want: list[Any]) -> bool:
    return len(shape) == len(want) and all(w is None or not isinstance(d, int) or d == w for d, w in zip(shape, want))


def session_options(threads: int | None = None):
    """ONNX Runtime session options used for every artifact: all graph optimisations, quiet logs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


def ort_providers(provider: str, *, cuda_graph: bool = False) -> list[Any]:
    """The ``providers`` argument of an ONNX Runtime session on ``provider``: ``ORT_PROVIDERS[provider]``, with the
    CUDA provider's ``use_tf32`` option off while ``NVIDIA_TF32_OVERRIDE=0`` is set (as ``mnv2 check`` sets it).

    cuBLAS and cuDNN read that variable once, when the process first loads them, so it cannot switch TF32 off for a
    process that has already run a CUDA session; the provider option applies to each new session.

    ``cuda_graph``: the CUDA provider's ``enable_cuda_graph`` (its first run captures the kernels into a CUDA graph,
    later runs replay it). ONNX Runtime's conditions: every node on the CUDA provider, one input shape per session,
    inputs and outputs bound to fixed device buffers (``run_with_iobinding``)."""
    if cuda_graph and provider != "cuda":
        raise ConfigError(
            f"CUDA graphs were asked for on the {provider} provider", hint="CUDA graphs run on --provider cuda only"
        )
    cuda: dict[str, str] = {}
    if os.environ.get("NVIDIA_TF32_OVERRIDE") == "0":
        cuda["use_tf32"] = "0"
    if cuda_graph:
        cuda["enable_cuda_graph"] = "1"
    return [(n, dict(cuda)) if n == "CUDAExecutionProvider" and cuda else n for n in ORT_PROVIDERS[provider]]


def create_session(
    path: str | Path,
    provider: str = "cpu",
    *,
    threads: int | None = None,
    options=None,
    model=None,
    cuda_graph: bool = False,
):
    """A checked ONNX Runtime session for ``path`` on ``provider``: (session, provider obtained).

    The file is parsed (unless ``model``, its already parsed ``onnx.ModelProto``, is given) and checked with ``onnx``
    first, so a damaged file is an :class:`ArtifactError`. ``cuda_graph``: see :func:`ort_providers`; a model ONNX
    Runtime will not capture (a node off the CUDA provider) is :class:`ProviderUnavailable` with its reason.
    """
    import onnxruntime as ort

    p = Path(path)
    if model is None:
        _load_onnx_model(p)
    else:
        _check_onnx_model(model, p)
    if provider not in PROVIDERS:
        raise ConfigError(f"unknown provider {provider!r}", hint=f"choose one of {', '.join(PROVIDERS)}")
    providers = ort_providers(provider, cuda_graph=cuda_graph)
    wanted = ORT_PROVIDERS[provider][0]
    if provider != "cpu":
        reason = onnx_provider_problem(provider)
        if reason:
            raise ProviderUnavailable(f"{provider.upper()} was asked for but {reason}", path=p, hint=_GPU_HINT)
        _preload_cuda_libraries()
    # ONNX Runtime logs a provider's failure on fd 2, and its Python wrapper prints an "EP Error" banner on stdout
    # before falling back (which is caught below): both go into the reason, neither onto the user's stdout
    with _captured_stderr() as captured, contextlib.redirect_stdout(captured):
        try:
            session = ort.InferenceSession(str(p), options or session_options(threads), providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            text = str(exc).strip().splitlines()
            if cuda_graph and "graph capture" in str(exc):
                raise ProviderUnavailable(
                    f"ONNX Runtime does not capture this model in a CUDA graph: {first_line(exc)}",
                    path=p,
                    hint="CUDA graphs need every node on the CUDA provider (an INT8 model keeps some on the CPU)",
                ) from None
            raise ArtifactError(
                f"ONNX Runtime cannot load the model: {text[0] if text else type(exc).__name__}",
                path=p,
                hint="export it again with `mnv2 export`",
            ) from None
    got = session.get_providers()
    if wanted not in got:
        raise ProviderUnavailable(
            f"{provider.upper()} was asked for but {session_failure(captured.getvalue())}", path=p, hint=_GPU_HINT
        )
    if captured.getvalue().strip():
        log.debug("onnxruntime: %s", captured.getvalue().strip())
    return session, provider


_GPU_HINT = "run on a machine with an NVIDIA GPU and onnxruntime-gpu, or use --provider cpu"
# torch's nvidia-* wheels bring the CUDA and cuDNN libraries; an install without torch takes onnxruntime-gpu's own
GPU_LIBRARIES = 'install torch (the train extra) or the gpu extra (python -m pip install -e ".[gpu]")'


def installed_onnxruntime_packages() -> set[str]:
    """Names of the installed onnxruntime distributions (onnxruntime, onnxruntime-gpu, ...), lower case."""
    names = {(d.metadata["Name"] or "").lower() for d in importlib.metadata.distributions()}
    return {n for n in names if n.startswith("onnxruntime") and not n.startswith("onnxruntime-extensions")}


def onnx_provider_problem(
    provider: str, *, installed: set[str] | None = None, available: list[str] | None = None
) -> str | None:
    """Why ``provider`` cannot work with the installed onnxruntime, known before creating a session (or None).

    ``installed`` (package names) and ``available`` (``onnxruntime.get_available_providers()``) default to this
    environment's."""
    import onnxruntime as ort

    installed = installed_onnxruntime_packages() if installed is None else installed
    available = ort.get_available_providers() if available is None else available
    builds = installed - {"onnxruntime"}
    if "onnxruntime" in installed and builds:
        return (
            f"both onnxruntime and {', '.join(sorted(builds))} are installed and shadow each other "
            "(`pip uninstall onnxruntime onnxruntime-gpu`, then `pip install onnxruntime-gpu`)"
        )
    name = ORT_PROVIDERS[provider][0]
    if name not in available:
        package = ", ".join(sorted(installed)) or "onnxruntime"
        return f"this onnxruntime build ({package} {ort.__version__}) has no {name} (install onnxruntime-gpu)"
    return None


def session_failure(log_text: str, *, has_device: bool | None = None) -> str:
    """Turn what ONNX Runtime logged while it failed to register a GPU provider into one reason."""
    has_device = _has_nvidia_device() if has_device is None else has_device
    missing = None
    for line in log_text.splitlines():
        if "cannot open shared object file" in line:
            missing = line.split("with error:")[-1].split(":")[0].strip()
            break
    if (missing and missing.startswith("libcuda.so")) or not has_device:
        return "no NVIDIA GPU driver was found on this machine (no /dev/nvidia*, or libcuda.so.1 missing)"
    if missing:
        need = re.search(r"Require (.+?)\. ", log_text)
        return (
            f"the CUDA libraries it needs are missing ({missing} not found"
            f"{'; it requires ' + need.group(1) if need else ''}): {GPU_LIBRARIES}"
        )
    first = next((ln.strip() for ln in log_text.splitlines() if "Failed" in ln or "rror" in ln), "")
    first = re.sub(r"\x1b\[[0-9;]*m", "", first)[:300]  # no terminal colour codes
    return f"ONNX Runtime did not register it ({first or 'no reason logged'})"


def _has_nvidia_device() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*")) or Path("/proc/driver/nvidia/version").exists()


def _preload_cuda_libraries() -> None:
    """onnxruntime-gpu's own loader for the CUDA/cuDNN libraries of the nvidia-* wheels (torch's, or those of
    onnxruntime-gpu's cuda and cudnn extras, which the gpu extra installs)."""
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                ort.preload_dlls()
        except Exception as exc:  # noqa: BLE001 - best effort; the session check below reports what matters
            log.debug("onnxruntime.preload_dlls failed: %r", exc)
        if out.getvalue().strip():
            log.debug("onnxruntime.preload_dlls: %s", out.getvalue().strip())


@contextlib.contextmanager
def _captured_stderr():
    """Capture what native code writes to file descriptor 2 (ONNX Runtime logs provider failures there)."""
    buffer = io.StringIO()
    try:
        fd = os.dup(2)
    except OSError:  # no usable stderr: nothing to capture
        yield buffer
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            import sys

            sys.stderr.flush()
            os.dup2(tmp.fileno(), 2)
            yield buffer
        finally:
            os.dup2(fd, 2)
            os.close(fd)
            tmp.seek(0)
            buffer.write(tmp.read().decode("utf-8", "replace"))
