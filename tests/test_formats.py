"""The registry of artifact formats: every format round-trips through its own module, each file name is one
format's, lookups by name / file / content agree, and a new format plugs in without touching the commands."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mnv2export import formats
from mnv2export.errors import ArtifactError, ConfigError
from mnv2export.formats import REGISTRY, ArtifactFormat, ExportOptions
from mnv2export.layout import ARTIFACT_FILES
from mnv2export.runtime import load_artifact, read_metadata

# how close each precision must answer to the eager model (max abs logit difference, relative to the largest logit)
TOLERANCE = {"fp32": 1e-3, "fp16": 0.05}


def _batch(n: int = 6) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, 32, 32)).astype(np.float32)


def test_each_file_name_and_each_name_is_one_formats():
    files = [f.file for f in REGISTRY if f.file]
    assert sorted(files) == sorted(ARTIFACT_FILES) and len(set(files)) == len(files)
    assert formats.names() == ("eager", "torchscript", "onnx", "int8", "fp16", "pt2", "executorch", "executorch-int8")
    for f in REGISTRY:
        assert formats.get(f.name) is f
        assert f.file is None or formats.by_file_name(f.file) is f
    assert formats.by_file_name("notes.txt") is None


def test_an_unknown_format_is_one_error():
    with pytest.raises(ConfigError, match="unknown format 'tflite'") as err:
        formats.get("tflite")
    assert err.value.hint == "choose one of eager, torchscript, onnx, int8, fp16, pt2, executorch, executorch-int8"
    with pytest.raises(ConfigError, match="unknown formats tflite"):
        formats.parse_groups("onnx,tflite")


def test_an_export_writes_each_format_after_the_one_it_is_made_from():
    every = ExportOptions(groups=("torchscript", "onnx"), quantize=True, fp16=True)
    chosen = formats.to_export(every)
    assert [f.name for f in chosen] == ["torchscript", "onnx", "int8", "fp16"]
    for i, f in enumerate(chosen):
        assert f.after is None or f.after in [g.name for g in chosen[:i]], f.name
    assert [f.name for f in formats.to_export(ExportOptions(groups=("onnx",)))] == ["onnx"]
    assert [f.name for f in formats.to_export(ExportOptions(groups=("torchscript",), fp16=True))] == ["torchscript"]
    assert formats.export_groups() == ("torchscript", "onnx", "pt2", "executorch")
    assert formats.parse_groups("all") == (("torchscript", "onnx", "pt2", "executorch"), False)
    assert formats.parse_groups("onnx,pt2") == (("onnx", "pt2"), True)
    mobile = formats.to_export(ExportOptions(groups=("executorch",), quantize=True))
    assert [f.name for f in mobile] == ["executorch", "executorch-int8"]


def test_every_format_round_trips_to_the_eager_models_answers(exported, trained_checkpoint):
    """export -> load through the format's own module -> the eager model's logits (INT8: its classes)."""
    x = _batch()
    eager = formats.for_file(trained_checkpoint).load(Path(trained_checkpoint), "cpu").run(x)
    scale = max(1.0, float(np.abs(eager).max()))
    for fmt in _in(exported):
        path = exported.out_dir / fmt.file
        assert formats.for_file(path).kind == fmt.kind, fmt.name
        runner = fmt.load(path, "cpu")
        assert (runner.format, runner.precision) == (fmt.kind, fmt.precision), fmt.name
        got = runner.run(x)
        if fmt.precision == "int8":
            assert (got.argmax(1) == eager.argmax(1)).mean() >= 0.5, fmt.name
        else:
            assert np.abs(got - eager).max() <= TOLERANCE[fmt.precision] * scale, fmt.name
        meta = fmt.read_metadata(path)
        assert meta == read_metadata(path) and (meta["format"], meta["precision"]) == (fmt.kind, fmt.precision)
        entry = exported.artifacts[fmt.file]
        assert (entry["format"], entry["precision"]) == (fmt.kind, fmt.precision), fmt.name


def test_every_format_describes_its_files(exported, trained_checkpoint):
    eager = formats.for_file(trained_checkpoint).describe(Path(trained_checkpoint))
    folded = {}
    for fmt in _in(exported):
        d = fmt.describe(exported.out_dir / fmt.file)
        folded[fmt.name] = d.model.params
        assert d.metadata["precision"] == fmt.precision and (d.graph is not None) == (fmt.kind == "onnx")
    assert len(set(folded.values())) == 1  # one network, BatchNorm folded, whatever the file
    assert eager.model.params > folded["onnx"]  # the checkpoint's BatchNorms keep their scale and shift
    assert eager.model.macs > 0 and "checkpoint" in eager.model_source


def _in(exported):
    """The formats of the suite's shared export (every format but .pt2 and .pte: test_pt2_pte_commands.py)."""
    return [f for f in formats.exported() if f.file in exported.artifacts]


def test_a_file_of_no_format_is_one_error(tmp_path):
    notes = tmp_path / "notes.onnx"
    notes.write_text("not a model")
    with pytest.raises(ArtifactError, match="not a model"):
        formats.for_file(notes)


@dataclass(frozen=True)
class _Fake(ArtifactFormat):
    """A format filekind does not know: its files start with b"FAKE"; it answers zeros."""

    def sniff(self, path: Path) -> bool:
        return path.read_bytes()[:4] == b"FAKE"

    def load(self, path, provider, *, threads=None, cuda_graph=False):
        return ("fake runner", path, provider, threads)


def test_a_new_format_is_one_module_and_one_registry_line(tmp_path, monkeypatch):
    """What the pt2 / pte formats do: registered, their files are told by their sniffer and loaded by their module,
    through the one loader every command calls; a missing package is one line naming the extra that brings it."""
    fake = _Fake(
        name="fake", kind="fake", precision="fp32", file="model.fake", modules=("no_such_module_x",), extra="mobile"
    )
    monkeypatch.setattr(formats, "REGISTRY", (*REGISTRY, fake))
    f = tmp_path / "model.fake"
    f.write_bytes(b"FAKE and more")
    assert formats.for_file(f) is fake and formats.by_file_name("model.fake") is fake
    assert load_artifact(f, "cpu", threads=2) == ("fake runner", f, "cpu", 2)
    with pytest.raises(ConfigError, match="CUDA graphs are timed for ONNX files only, not fake"):
        load_artifact(f, "cuda", cuda_graph=True)
    why = fake.unavailable()
    assert why == (
        "the fake format needs no_such_module_x, which this install lacks: "
        'install it with python -m pip install -c constraints.txt -e ".[mobile]"'
    )
    assert formats.ONNX.unavailable() is None
