"""Outputs under faults: a full disk, a read-only folder, two exports at once. Nothing half-written, earlier
outputs intact, a one-line error."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_FLAGS

from mnv2export.fileio import sha256_file


def mnv2(*args, **kw):
    return subprocess.run([sys.executable, "-m", "mnv2export", *args], capture_output=True, text=True, **kw)


def _one_error_line(stderr: str) -> str:
    """The one ``error:`` line (progress logs may come before it), last, and no traceback."""
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0] and "Traceback" not in stderr, stderr
    return errors[0]


@contextlib.contextmanager
def small_filesystem(path: Path, size: str, readonly: bool = False):
    """A tmpfs of ``size`` mounted at ``path`` (needs root, as on this project's machines); skips elsewhere."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(folder: Path, keep_free: int) -> None:
    """Fill the file system of ``folder`` until about ``keep_free`` bytes are left."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    if free > keep_free:
        with open(folder / "ballast", "wb") as fh:
            fh.write(b"\0" * (free - keep_free))


def test_train_on_a_full_disk_is_a_clear_error_and_keeps_earlier_outputs(tmp_path):
    with small_filesystem(tmp_path / "fs", "64M") as fs:
        out = fs / "run"
        r = mnv2("train", *TINY_FLAGS, "--epochs", "1", "--out", str(out))
        assert r.returncode == 0, r.stderr
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        _fill(fs, keep_free=200_000)  # room for metrics.csv, not for a checkpoint
        r = mnv2("train", "--resume", "--out", str(out), "--epochs", "2", "--no-progress")
        assert r.returncode == 1
        line = _one_error_line(r.stderr)
        assert "disk full" in line and "free some space" in line
        for name in ("best.pt", "last.pt"):  # the checkpoints could not be rewritten: the earlier ones stand, whole
            assert (out / name).read_bytes() == before[name], name
        json.loads(
            (out / "config.json").read_text()
        )  # small files may have been rewritten (the run's new --epochs), whole
        assert (out / "metrics.csv").read_text().startswith("epoch,")
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_export_on_a_full_disk_and_into_a_read_only_folder(tmp_path, trained_checkpoint):
    with small_filesystem(tmp_path / "fs", "16M") as fs:
        r = mnv2("export", str(trained_checkpoint), "--format", "onnx", "--out", str(fs / "exp"))
        assert r.returncode == 0, r.stderr
        before = {p.name: p.read_bytes() for p in (fs / "exp").iterdir()}
        _fill(fs, keep_free=50_000)
        r = mnv2("export", str(trained_checkpoint), "--format", "torchscript,onnx", "--out", str(fs / "exp"))
        assert r.returncode == 1
        line = _one_error_line(r.stderr)
        assert "disk full" in line
        # the file being written is named (TorchScript is written first, and is larger than 50 kB)
        assert f"({fs / 'exp' / 'model.torchscript.pt'})" in line, line
        assert {p.name: p.read_bytes() for p in (fs / "exp").iterdir()} == before  # untouched, no temporary files
    with small_filesystem(tmp_path / "ro", "1M", readonly=True) as ro:
        r = mnv2("export", str(trained_checkpoint), "--out", str(ro / "exp"))
        assert r.returncode == 1
        line = _one_error_line(r.stderr)
        assert "cannot create output folder" in line and str(ro / "exp") in line


@pytest.mark.parametrize("room", [1.5, 2.4])
def test_a_full_disk_in_the_int8_step_is_the_disk_full_error(tmp_path, trained_checkpoint, room, capfd):
    """A real full disk in the INT8 step, with room for 1.5 and 2.4 FP32 models: it said "INT8 quantization failed:
    [Errno 28] ...: report it" (onnxruntime's quantizer wraps the OSError) and, with more room, "Wire format was
    corrupt" (onnx's C++ shape inference cuts its file short without an error, and the next step reads it)."""
    from mnv2export.errors import OutputError
    from mnv2export.export import export_all

    with small_filesystem(tmp_path / "fs", "16M") as fs:
        out = fs / "exp"
        export_all(trained_checkpoint, out, formats="onnx")
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        _fill(fs, keep_free=int(room * len(before["model.onnx"])))
        capfd.readouterr()
        with pytest.raises(OutputError) as err:
            export_all(trained_checkpoint, out, formats="onnx", quantize=True, calib_size=16)
        assert (
            err.value.one_line()
            == f"disk full while writing ({out / 'model.int8.onnx'}): free some space and run again; earlier files are intact"
        )
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary file left either
        assert "Traceback" not in capfd.readouterr().err  # onnxruntime's own log of its failure is not printed


def test_two_exports_at_once(tmp_path, trained_checkpoint, tiny_checkpoint):
    """Into different folders: no interference. Into the same folder: the later one wins whole, never a mix."""

    def start(ckpt, out):
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mnv2export",
                "export",
                str(ckpt),
                "--format",
                "torchscript,onnx",
                "--out",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    procs = [
        start(trained_checkpoint, tmp_path / "a"),
        start(tiny_checkpoint, tmp_path / "b"),
        start(trained_checkpoint, tmp_path / "same"),
        start(tiny_checkpoint, tmp_path / "same"),
    ]
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err
    expected = {"a": sha256_file(trained_checkpoint), "b": sha256_file(tiny_checkpoint)}
    for folder in ("a", "b", "same"):
        manifest = json.loads((tmp_path / folder / "manifest.json").read_text())
        source = manifest["source_checkpoint"]["sha256"]
        if folder in expected:
            assert source == expected[folder]
        assert source in expected.values()
        for name, entry in manifest["artifacts"].items():
            assert sha256_file(tmp_path / folder / name) == entry["sha256"], (
                folder,
                name,
            )  # every file from one export
            assert entry["source_checkpoint_sha256"] == source
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == sorted(
            [*manifest["artifacts"], "manifest.json"]
        )
