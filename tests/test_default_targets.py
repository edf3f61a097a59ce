"""The targets a command takes when given none: data/ as an ImageFolder, the newest run under weights/, the newest
export folder under export/ ("newest": the latest modification of its best.pt / manifest.json)."""

import os
import subprocess
import sys

import pytest

from mnv2export.default_targets import (
    default_data_folder,
    export_model_file,
    newest_export,
    newest_run,
    require_newest_export,
    require_newest_run,
)
from mnv2export.errors import ArtifactError, CheckpointError


def _file(path, mtime=None, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_data_folder_needs_class_folders_in_train_and_val(tmp_path):
    data = tmp_path / "data"
    assert default_data_folder(data) is None  # no folder
    _file(data / "README.md")
    assert default_data_folder(data) is None  # the repository's own data/: a README only
    (data / "train" / "cat").mkdir(parents=True)
    assert default_data_folder(data) is None  # no val/
    (data / "val").mkdir()
    _file(data / "val" / "notes.txt")
    assert default_data_folder(data) is None  # val/ without a class folder
    (data / "val" / ".hidden").mkdir()
    assert default_data_folder(data) is None  # a hidden folder is no class
    (data / "val" / "cat").mkdir()
    assert default_data_folder(data) == data
    assert default_data_folder(_file(tmp_path / "afile")) is None


def test_newest_run_is_the_latest_best_pt_and_ignores_folders_without_one(tmp_path):
    weights = tmp_path / "weights"
    assert newest_run(weights) is None
    _file(weights / "README.md")
    (weights / "empty-run").mkdir()
    _file(weights / "no-best" / "last.pt", mtime=3_000_000)  # a run stopped before its first best.pt: no candidate
    assert newest_run(weights) is None
    old = _file(weights / "b-old" / "best.pt", mtime=1_000_000)
    new = _file(weights / "a-new" / "best.pt", mtime=2_000_000)  # newest by time, not by name
    _file(weights / "b-old" / "last.pt", mtime=4_000_000)  # only best.pt's time counts
    assert newest_run(weights) == new
    os.utime(old, (2_500_000, 2_500_000))  # a run trained further
    assert newest_run(weights) == old
    (weights / "c-dir" / "best.pt").mkdir(parents=True)  # a folder named best.pt is no checkpoint
    assert newest_run(weights) == old


def test_newest_export_is_the_latest_manifest(tmp_path):
    export = tmp_path / "export"
    assert newest_export(export) is None
    _file(export / "README.md")
    _file(export / "half" / "model.onnx", mtime=3_000_000)  # an export that never finished: no manifest
    assert newest_export(export) is None
    _file(export / "one" / "manifest.json", mtime=1_000_000)
    _file(export / "two" / "manifest.json", mtime=2_000_000)
    assert newest_export(export) == export / "two"


def test_no_candidate_is_one_error_saying_how_to_get_one(tmp_path):
    with pytest.raises(CheckpointError) as info:
        require_newest_run("export", tmp_path / "weights")
    assert "train one with `mnv2 train`, or name a checkpoint: mnv2 export" in info.value.one_line()
    with pytest.raises(ArtifactError) as info:
        require_newest_export("bench", tmp_path / "export")
    assert "export one with `mnv2 export`, or name one: mnv2 bench" in info.value.one_line()


def test_the_model_file_of_an_export_folder_prefers_fp32_onnx(tmp_path):
    folder = tmp_path / "export" / "run"
    with pytest.raises(ArtifactError, match="holds no model file"):
        export_model_file(folder)
    _file(folder / "model.int8.onnx")
    assert export_model_file(folder).name == "model.int8.onnx"
    _file(folder / "model.torchscript.pt")
    assert export_model_file(folder).name == "model.torchscript.pt"
    _file(folder / "model.onnx")
    assert export_model_file(folder).name == "model.onnx"


def test_resolving_a_default_imports_no_torch():
    code = (
        "import sys; import mnv2export.default_targets as d; d.newest_run(); d.newest_export(); "
        "d.default_data_folder(); assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
