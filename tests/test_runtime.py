"""The shared runtime: one loader for every artifact, metadata without a session, no silent provider fallback."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from mnv2export.errors import ArtifactError, ConfigError, DataError, ProviderUnavailable
from mnv2export.filekind import detect_format
from mnv2export.layout import FP16_FILE, INT8_FILE, ONNX_FILE, TORCHSCRIPT_FILE
from mnv2export.runtime import (
    OnnxRunner,
    TorchRunner,
    load_artifact,
    onnx_provider_problem,
    preprocess,
    read_metadata,
    session_failure,
)

FILES = {
    TORCHSCRIPT_FILE: ("torchscript", "fp32"),
    ONNX_FILE: ("onnx", "fp32"),
    INT8_FILE: ("onnx", "int8"),
    FP16_FILE: ("onnx", "fp16"),
}
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where there is no GPU")


def _batch(n: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def test_every_format_loads_and_describes_itself(exported, trained_checkpoint):
    eager = load_artifact(trained_checkpoint)
    assert isinstance(eager, TorchRunner) and (eager.format, eager.precision, eager.provider) == (
        "pytorch",
        "fp32",
        "cpu",
    )
    ref = eager.run(_batch())
    for name, (fmt, precision) in FILES.items():
        runner = load_artifact(exported.out_dir / name)
        assert (runner.format, runner.precision, runner.provider) == (fmt, precision, "cpu"), name
        assert runner.input_shape == (3, 32, 32) and runner.class_names == eager.class_names
        assert runner.metadata["source_checkpoint_sha256"] == eager.metadata["source_checkpoint_sha256"]
        if fmt == "onnx":
            assert isinstance(runner, OnnxRunner) and runner.session.get_providers() == ["CPUExecutionProvider"]
        y = runner(_batch())
        assert y.shape == ref.shape and y.dtype == np.float32
        if precision == "fp32":
            assert np.abs(y - ref).max() <= 1e-4 * max(1.0, float(np.abs(ref).max())), name


def test_detect_format_by_content_not_name(exported, trained_checkpoint, tmp_path):
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes((exported.out_dir / ONNX_FILE).read_bytes())
    assert detect_format(renamed) == "onnx" and load_artifact(renamed).format == "onnx"
    ts = tmp_path / "a.onnx"
    ts.write_bytes((exported.out_dir / TORCHSCRIPT_FILE).read_bytes())
    assert detect_format(ts) == "torchscript" and detect_format(trained_checkpoint) == "pytorch"


def test_threads_reach_the_session(exported):
    runner = load_artifact(exported.out_dir / INT8_FILE, threads=1)
    assert runner.session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(ConfigError):
        load_artifact(exported.out_dir / INT8_FILE, threads=0)


def test_wrong_input_is_a_clear_error(exported):
    runner = load_artifact(exported.out_dir / ONNX_FILE)
    for bad in (
        np.zeros((2, 3, 64, 64), np.float32),
        np.zeros((3, 32, 32), np.float32),
        [[0.0]],
        np.zeros((0, 3, 32, 32), np.float32),
    ):
        with pytest.raises(DataError, match="input batch has shape"):
            runner.run(bad)
    assert runner.run(np.zeros((2, 3, 32, 32), np.float64)).dtype == np.float32  # float64 is converted, not refused


def test_read_metadata_without_a_session(exported, trained_checkpoint):
    for name, (fmt, precision) in FILES.items():
        meta = read_metadata(exported.out_dir / name)
        assert (meta["format"], meta["precision"]) == (fmt, precision)
        assert meta["data_config"]["img_size"] == 32 and len(meta["class_names"]) == 4
    assert read_metadata(trained_checkpoint)["format"] == "pytorch"


def test_preprocess_uses_the_artifacts_own_transform(exported, tmp_path):
    from PIL import Image

    from mnv2export.config import DataConfig
    from mnv2export.data import eval_transform

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    img.save(tmp_path / "a.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    meta = read_metadata(exported.out_dir / ONNX_FILE)
    batch, kept, errors = preprocess([tmp_path / "a.png", tmp_path / "broken.jpg"], meta)
    assert batch.shape == (1, 3, 32, 32) and batch.dtype == np.float32 and len(kept) == 1 and len(errors) == 1
    want = eval_transform(DataConfig.from_dict(meta["data_config"]))(img).numpy()
    np.testing.assert_allclose(batch[0], want, atol=1e-6)
    assert load_artifact(exported.out_dir / ONNX_FILE).run(batch).shape == (1, 4)


def test_damaged_and_foreign_files_are_artifact_errors(exported, tmp_path):
    onnx_bytes = (exported.out_dir / ONNX_FILE).read_bytes()
    ts_bytes = (exported.out_dir / TORCHSCRIPT_FILE).read_bytes()
    cases = {
        "missing.onnx": None,
        "empty.onnx": b"",
        "truncated.onnx": onnx_bytes[: len(onnx_bytes) * 2 // 3],
        "noise.onnx": np.random.default_rng(0).integers(0, 255, 4096, dtype=np.uint8).tobytes(),
        "truncated.torchscript.pt": ts_bytes[: len(ts_bytes) // 2],
        "text.pt": b"hello, not a model\n",
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(ArtifactError):
            load_artifact(path)
        with pytest.raises(ArtifactError):
            read_metadata(path)
    with pytest.raises(ArtifactError, match="folder"):
        load_artifact(tmp_path)
    # a valid ONNX model that mnv2export did not write: no metadata, refused with that reason
    foreign = onnx.load(str(exported.out_dir / ONNX_FILE))
    del foreign.metadata_props[:]
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(ArtifactError, match="no mnv2export metadata"):
        load_artifact(tmp_path / "foreign.onnx")
    # a graph that parses but is broken (an initializer removed): onnx.checker refuses it before any session
    broken = onnx.load(str(exported.out_dir / ONNX_FILE))
    broken.graph.initializer.pop()
    onnx.save(broken, str(tmp_path / "broken.onnx"))
    with pytest.raises(ArtifactError, match="onnx.checker"):
        load_artifact(tmp_path / "broken.onnx")


def test_metadata_that_is_not_json_is_an_artifact_error(exported, tmp_path):
    model = onnx.load(str(exported.out_dir / ONNX_FILE))
    for p in model.metadata_props:
        if p.key == "mnv2_metadata":
            p.value = "{not json"
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_metadata(tmp_path / "m.onnx")


def test_unknown_provider_and_tensorrt_for_torch(exported, trained_checkpoint):
    with pytest.raises(ConfigError, match="unknown provider"):
        load_artifact(exported.out_dir / ONNX_FILE, "rocm")
    for path in (exported.out_dir / TORCHSCRIPT_FILE, trained_checkpoint):
        with pytest.raises(ConfigError, match="ONNX models only"):
            load_artifact(path, "tensorrt")


@no_cuda
@pytest.mark.parametrize("name", [ONNX_FILE, INT8_FILE, FP16_FILE, TORCHSCRIPT_FILE])
def test_cuda_asked_for_where_there_is_none(exported, name):
    with pytest.raises(ProviderUnavailable) as info:
        load_artifact(exported.out_dir / name, "cuda")
    text = info.value.one_line()
    assert "CUDA was asked for but" in text
    assert any(
        why in text
        for why in (
            "no NVIDIA GPU driver",
            "has no CUDAExecutionProvider",
            "shadow each other",
            "torch sees no CUDA",
            "no CUDA support",
        )
    )


@no_cuda
def test_cuda_asked_for_a_checkpoint_where_there_is_none(trained_checkpoint):
    with pytest.raises(ProviderUnavailable, match="CUDA was asked for"):
        load_artifact(trained_checkpoint, "cuda")


def test_provider_problems_known_before_a_session():
    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    both = onnx_provider_problem("cuda", installed={"onnxruntime", "onnxruntime-gpu"}, available=gpu_build)
    assert both and "both onnxruntime and onnxruntime-gpu" in both
    cpu_only = onnx_provider_problem("cuda", installed={"onnxruntime"}, available=["CPUExecutionProvider"])
    assert cpu_only and "has no CUDAExecutionProvider" in cpu_only
    assert onnx_provider_problem("tensorrt", installed={"onnxruntime-gpu"}, available=gpu_build[1:]) is not None
    assert onnx_provider_problem("cuda", installed={"onnxruntime-gpu"}, available=gpu_build) is None


def test_provider_failure_reasons_from_onnxruntimes_log():
    log = (
        "\x1b[1;31m[E:onnxruntime:Default, provider_bridge_ort.cc:2458] Failed to load library libonnxruntime_providers_cuda.so "
        "with error: libcublasLt.so.13: cannot open shared object file: No such file or directory\n"
        "\x1b[0;93m[W:onnxruntime:Default] Failed to create CUDAExecutionProvider. Require cuDNN 9.* and CUDA 13.*. Please install"
    )
    assert (
        session_failure(log, has_device=True)
        == "the CUDA libraries it needs are missing (libcublasLt.so.13 not found; it requires cuDNN 9.* and CUDA 13.*): "
        'install torch (the train extra) or the gpu extra (python -m pip install -e ".[gpu]")'
    )
    assert "no NVIDIA GPU driver" in session_failure(log, has_device=False)
    assert "no NVIDIA GPU driver" in session_failure(log.replace("libcublasLt.so.13", "libcuda.so.1"), has_device=True)
    assert session_failure("", has_device=True) == "ONNX Runtime did not register it (no reason logged)"


@pytest.mark.cuda
@pytest.mark.parametrize("name", [TORCHSCRIPT_FILE, ONNX_FILE, FP16_FILE])
def test_cuda_matches_cpu(exported, name):
    """FP32 is compared as IEEE float32: with TF32, ONNX Runtime's and torch's default for convolutions on Ampere and
    later, the FP32 ONNX model was 2.2e-3 of the largest logit away on an H200."""
    from mnv2export.check import tf32_disabled

    x = _batch(8)
    cpu = load_artifact(exported.out_dir / name).run(x)
    with tf32_disabled():
        gpu = load_artifact(exported.out_dir / name, "cuda")
        assert gpu.provider == "cuda"
        out = gpu.run(x)
    tol = 5e-3 if name == FP16_FILE else 1e-3
    assert np.abs(out - cpu).max() <= tol * max(1.0, float(np.abs(cpu).max()))


def test_manifest_names_match_what_the_runtime_reads(exported):
    for name, entry in exported.artifacts.items():
        meta = read_metadata(exported.out_dir / name)
        assert (meta["format"], meta["precision"]) == (entry["format"], entry["precision"])
    assert json.loads((exported.out_dir / "manifest.json").read_text())["artifacts"].keys() == exported.artifacts.keys()


def test_tf32_override_reaches_the_cuda_provider_as_its_option(monkeypatch):
    """cuBLAS and cuDNN read NVIDIA_TF32_OVERRIDE once per process (on an H200, setting it after a first CUDA session
    left the FP32 model 1.4e-3 away): while it is "0", each CUDA session also gets ``use_tf32=0``."""
    from mnv2export.runtime import ort_providers

    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    assert ort_providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "1")
    assert ort_providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    off = ("CUDAExecutionProvider", {"use_tf32": "0"})
    assert ort_providers("cuda") == [off, "CPUExecutionProvider"]
    assert ort_providers("tensorrt") == ["TensorrtExecutionProvider", off, "CPUExecutionProvider"]
    assert ort_providers("cpu") == ["CPUExecutionProvider"]


def _record_cuda_sessions(monkeypatch, refuse: list[str] | None = None) -> list:
    """Replace ONNX Runtime's session class by one that records each session's ``providers`` argument and answers
    that it got the CUDA provider (there is no GPU here); while ``refuse`` holds a message, creating one raises it.
    Returns the list of recorded arguments."""
    import onnxruntime as ort

    import mnv2export.runtime.sessions as sessions

    seen = []

    class Recorder:
        def __init__(self, path, options, providers):
            seen.append(providers)
            if refuse:
                raise RuntimeError(refuse[-1])

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    monkeypatch.setattr(sessions, "onnx_provider_problem", lambda provider: None)
    monkeypatch.setattr(sessions, "_preload_cuda_libraries", lambda: None)
    monkeypatch.setattr(ort, "InferenceSession", Recorder)
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    return seen


def test_check_creates_cuda_sessions_with_tf32_off(exported, monkeypatch):
    """The sessions ``mnv2 check`` creates inside ``tf32_disabled`` get the option (ONNX Runtime's session class is
    replaced by one that records its arguments: there is no GPU here)."""
    import mnv2export.runtime as runtime
    from mnv2export.check import tf32_disabled

    seen = _record_cuda_sessions(monkeypatch)
    runtime.create_session(exported.out_dir / ONNX_FILE, "cuda")
    with tf32_disabled():
        runtime.create_session(exported.out_dir / ONNX_FILE, "cuda")
    assert seen == [
        ["CUDAExecutionProvider", "CPUExecutionProvider"],
        [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"],
    ]


def test_cuda_graphs_are_the_cuda_providers_option_beside_tf32(monkeypatch):
    from mnv2export.runtime import ort_providers

    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    assert ort_providers("cuda", cuda_graph=True) == [
        ("CUDAExecutionProvider", {"enable_cuda_graph": "1"}),
        "CPUExecutionProvider",
    ]
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    assert ort_providers("cuda", cuda_graph=True) == [
        ("CUDAExecutionProvider", {"use_tf32": "0", "enable_cuda_graph": "1"}),
        "CPUExecutionProvider",
    ]
    for provider in ("cpu", "tensorrt"):
        with pytest.raises(ConfigError, match=f"CUDA graphs were asked for on the {provider} provider"):
            ort_providers(provider, cuda_graph=True)


def test_a_cuda_graph_session_gets_the_option_and_a_refusal_says_why(exported, monkeypatch):
    """ONNX Runtime refuses to capture a model with nodes off the CUDA provider (INT8's DequantizeLinear on an H200,
    benchmarks/RESULTS.md) when the session is created: that is said as the reason the row cannot run, not as a file
    ONNX Runtime cannot load. (ONNX Runtime's session class is replaced by a recorder: there is no GPU here.)"""
    import mnv2export.runtime as runtime

    refuse = []
    seen = _record_cuda_sessions(monkeypatch, refuse)
    runner = runtime.load_artifact(exported.out_dir / FP16_FILE, "cuda", cuda_graph=True)
    assert runner.provider == "cuda" and seen == [
        [("CUDAExecutionProvider", {"enable_cuda_graph": "1"}), "CPUExecutionProvider"]
    ]
    refuse.append(
        "[ONNXRuntimeError] : 1 : FAIL : This session cannot use the graph capture feature as requested by the user  "
        "as all compute graph nodes have not been partitioned to the CUDAExecutionProvider"
    )
    with pytest.raises(
        ProviderUnavailable, match="does not capture this model in a CUDA graph: .*not been partitioned"
    ) as info:
        runtime.load_artifact(exported.out_dir / INT8_FILE, "cuda", cuda_graph=True)
    assert "every node on the CUDA provider" in info.value.one_line()
    with pytest.raises(
        ArtifactError, match="cannot load the model"
    ):  # the same failure without CUDA graphs is the file's
        runtime.load_artifact(exported.out_dir / INT8_FILE, "cuda")


def test_cuda_graphs_are_for_onnx_files_on_cuda(exported):
    with pytest.raises(ConfigError, match="CUDA graphs are timed for ONNX files only, not torchscript"):
        load_artifact(exported.out_dir / TORCHSCRIPT_FILE, "cuda", cuda_graph=True)  # before any CUDA is asked for
    with pytest.raises(ConfigError, match="on the cpu provider"):
        load_artifact(exported.out_dir / ONNX_FILE, "cpu", cuda_graph=True)


# --------------------------------------------------------------------------------------------------- no fallback, metadata
@no_cuda
def test_no_silent_cpu_fallback_even_when_the_precheck_misses(exported, monkeypatch):
    """If the pre-session check lets CUDA through, ONNX Runtime falls back to CPU on its own; the runtime must see
    that in session.get_providers() and raise, not hand back a CPU session labelled cuda."""
    import mnv2export.runtime as runtime
    import mnv2export.runtime.sessions as sessions

    monkeypatch.setattr(sessions, "onnx_provider_problem", lambda provider: None)
    monkeypatch.setattr(sessions, "_preload_cuda_libraries", lambda: None)
    with pytest.raises(ProviderUnavailable, match="CUDA was asked for but"):
        runtime.load_artifact(exported.out_dir / ONNX_FILE, "cuda")


def test_shadowing_onnxruntime_packages_are_named(exported, monkeypatch):
    """README: both onnxruntime and onnxruntime-gpu installed -> `--provider cuda` says so (before any session)."""
    import mnv2export.runtime as runtime
    import mnv2export.runtime.sessions as sessions

    monkeypatch.setattr(sessions, "installed_onnxruntime_packages", lambda: {"onnxruntime", "onnxruntime-gpu"})
    with pytest.raises(ProviderUnavailable, match="shadow each other"):
        runtime.load_artifact(exported.out_dir / ONNX_FILE, "cuda")


def test_cuda_device_follows_the_local_rank(monkeypatch):
    import mnv2export.device as device

    monkeypatch.setattr(device, "cuda_unavailable_reason", lambda: None)
    assert device.resolve_device("cuda", 1) == torch.device("cuda", 1)
    assert device.resolve_device("auto", 3) == torch.device("cuda", 3)


def test_onnx_graph_must_match_its_metadata(exported, tmp_path):
    from test_check import _wrong_metadata

    from mnv2export.runtime import load_artifact
    from mnv2export.runtime.onnx_model import shape_fits

    assert not shape_fits(["batch", 3, 64, 64], [None, 3, 32, 32]) and shape_fits(
        ["batch", 3, 32, 32], [None, 3, 32, 32]
    )
    _wrong_metadata(exported.out_dir / ONNX_FILE, tmp_path / "m.onnx", ["input_size"], [3, 64, 64])
    with pytest.raises(ArtifactError, match="does not match its metadata"):
        load_artifact(tmp_path / "m.onnx")


def test_metadata_lacking_a_key_is_an_artifact_error(exported, tmp_path):
    from mnv2export.export.onnx import get_metadata, set_metadata

    model = onnx.load(str(exported.out_dir / ONNX_FILE))
    meta = get_metadata(model)
    del meta["mean"]
    set_metadata(model, meta)
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(ArtifactError, match="lacks mean"):
        read_metadata(tmp_path / "m.onnx")


def test_more_threads_than_cpus_is_warned_about(monkeypatch, caplog):
    """--threads 999 on 2 cores ran training 90x and a benchmark 5x slower without a word: now a warning says why."""
    import logging
    import os

    from mnv2export.device import warn_if_oversubscribed

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with caplog.at_level(logging.WARNING, logger="mnv2export"):
        warn_if_oversubscribed(2)
        warn_if_oversubscribed(None)
        assert not caplog.records
        warn_if_oversubscribed(999)
    assert "999 intra-op threads on 2 usable CPU(s)" in caplog.text and "set --threads to 2 or fewer" in caplog.text


def test_a_command_of_several_steps_warns_about_its_threads_once(monkeypatch, caplog):
    """`mnv2 pipeline --threads 8` on 2 cores warned twice, from training and from the benchmark: inside
    warn_oversubscription_once (as the pipeline runs its steps) a thread count is warned about once."""
    import logging
    import os

    from mnv2export.device import warn_if_oversubscribed, warn_oversubscription_once

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with caplog.at_level(logging.WARNING, logger="mnv2export"):
        with warn_oversubscription_once():
            warn_if_oversubscribed(8)
            warn_if_oversubscribed(8)
            assert len(caplog.records) == 1
            warn_if_oversubscribed(4)  # another count is news
            assert len(caplog.records) == 2
        warn_if_oversubscribed(8)  # outside: every call warns again
        assert len(caplog.records) == 3


@no_cuda
def test_a_gpu_provider_that_fails_leaves_stdout_clean(exported, capfd):
    """ONNX Runtime's Python wrapper prints a multi-line '*** EP Error ***' banner on stdout before it falls back to
    the CPU: `mnv2 predict --json - > out.json` then wrote it into the JSON file. It now goes into the reason only."""
    import onnxruntime

    from mnv2export.runtime import create_session

    for provider in ("cuda", "tensorrt"):
        if {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[
            provider
        ] not in onnxruntime.get_available_providers():
            continue  # a CPU-only build: refused before any session, nothing printed either way
        with pytest.raises(ProviderUnavailable):
            create_session(exported.out_dir / "model.onnx", provider)
        out, _ = capfd.readouterr()
        assert out == "", (provider, out[:200])
