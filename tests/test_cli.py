"""The CLI shell: fast help, one-line errors with exit 1, usage errors exit 2, tracebacks only with MNV2_DEBUG."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mnv2export.cli import app, main


def run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "mnv2export", *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def test_help_does_not_import_torch():
    code = "import sys; from mnv2export.cli import main; main(['--help']); assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "train" in r.stdout


def test_a_wrong_path_or_option_of_any_command_is_said_before_torch_is_imported(tmp_path):
    """Every command checks its options and the files it is given before it imports torch (or ONNX Runtime): a typo
    is answered in the time --help takes, not after the seconds those imports take."""
    empty = tmp_path / "empty.pt"
    empty.touch()
    run = tmp_path / "trained"  # a run folder passed where a checkpoint goes: the hint names its files
    run.mkdir()
    (run / "best.pt").write_bytes(b"x")
    said_run = f"pass a checkpoint of that run: {run / 'best.pt'} (its best epoch) or {run / 'last.pt'}"
    orphan = tmp_path / "orphan"  # an export folder whose source checkpoint is gone
    orphan.mkdir()
    (orphan / "manifest.json").write_text(
        '{"artifacts": {}, "source_checkpoint": {"path": "/nonexistent/best.pt", "sha256": "ab"}}'
    )
    cases = [
        (["train", "--data", "synth", "--epochs", "0"], "epochs = 0 is out of range"),
        (["train", "--config", "train/imagenet20_224.toml", "--epochs", "2"], "--warmup-epochs = 3.0 is out of range"),
        (["train", "--resume", "--overwrite", "--out", "x"], "--overwrite and --resume contradict each other"),
        (["export", "/nonexistent.pt"], "checkpoint not found (/nonexistent.pt)"),
        (["export", str(empty)], "checkpoint file is empty"),
        (["export", "/nonexistent.pt", "--format", "bogus"], "unknown --format bogus"),
        (
            ["export", "/nonexistent.pt", "--calib-size", "0", "--quantize"],
            "--calib-size = 0 is out of range: use a whole number between 1 and 10000",
        ),
        (["check", "/nonexistent.pt"], "checkpoint not found (/nonexistent.pt)"),
        (["check", str(tmp_path)], "checkpoint path is a folder without manifest.json"),
        (["export", str(run)], f"checkpoint path is a folder, not a file ({run}): {said_run}"),
        (["check", str(run)], f"checkpoint path is a folder without manifest.json ({run}): {said_run}"),
        (["bench", str(run)], f"the folder holds no manifest.json ({run}): {said_run}"),
        (["visualize", str(run)], f"checkpoint path is a folder, not a file ({run}): {said_run}"),
        (
            ["check", str(orphan)],
            "no reference model for this folder: the source checkpoint /nonexistent/best.pt is gone",
        ),
        (["check", str(orphan), "--artifacts", str(orphan)], "two artifacts folders: the target and --artifacts"),
        (["check", "/nonexistent.pt", "--samples", "0"], "samples = 0 is out of range"),
        (["check", "/nonexistent.pt", "--provider", "bogus"], "unknown --provider bogus"),
        (["bench", "/nonexistent"], "benchmark target not found (/nonexistent)"),
        (["bench", "/nonexistent", "--threads", "0"], "threads = 0 is out of range"),
        (["bench", "/nonexistent", "--formats", "bogus"], "unknown --formats bogus: choose from"),
        (["info", "/nonexistent"], "artifact not found (/nonexistent)"),
        (["info", str(tmp_path)], "artifact path is a folder, not a file"),
        (["predict", "/nonexistent.png", "--model", "/nonexistent.pt"], "artifact not found (/nonexistent.pt)"),
        (["predict", "/nonexistent.png", "--model", "/nonexistent.pt", "--top-k", "0"], "top-k = 0 is out of range"),
        (["visualize", "/nonexistent.pt"], "checkpoint not found (/nonexistent.pt)"),
        (["pipeline", "--epochs", "0", "--out", str(tmp_path / "run")], "epochs = 0 is out of range"),
        (["pipeline", "--threads", "0", "--out", str(tmp_path / "run")], "threads = 0 is out of range"),
        (["train", "--data", "synth", "--exif-orientation"], "--exif-orientation is for image files"),
        (
            ["train", "--data", "synth", "--auto-augment", "bogus"],
            "unknown --auto-augment 'bogus': choose one of none, ta_wide",
        ),
        (["train", "--data", "synth", "--random-erase", "1.5"], "--random-erase = 1.5 is out of range"),
        (["train", "--data", "synth", "--mixup-alpha", "-1"], "--mixup-alpha = -1.0 is out of range"),
        (["train", "--data", "synth", "--clip-grad-norm", "0"], "--clip-grad-norm = 0.0 is out of range"),
        (
            ["train", "--data", "synth", "--freeze-blocks", "5"],
            "--freeze-blocks keeps the starting weights, and none are given",
        ),
        (
            ["train", "--data", "synth", "--freeze-blocks", "20", "--init-from", "w.pth"],
            "--freeze-blocks = 20 is out of range",
        ),
        (["train", "--data", "/nonexistent/folder", "--epochs", "1"], "data folder not found (/nonexistent/folder)"),
        (
            ["train", "--data", str(Path(__file__)), "--epochs", "1"],
            f"data path is a file, not a folder ({Path(__file__)})",
        ),
        (
            ["train", "--data", "synth", "--init-from", "/nonexistent/w.pth"],
            "initial weights not found (/nonexistent/w.pth)",
        ),
        (
            ["train", "--data", "synth", "--init-from", str(Path(__file__).parent)],
            "initial weights path is a folder, not a file",
        ),
        (
            ["export", str(run / "best.pt"), "--quantize", "--calib-data", "/nonexistent/calib"],
            "calibration data not found (/nonexistent/calib)",
        ),
        (
            ["export", str(run / "best.pt"), "--quantize", "--calib-data", str(Path(__file__))],
            "calibration data is a file, not a folder of images",
        ),
        (
            ["export", "/nonexistent.pt", "--quantize", "--calib-data", "/nonexistent/calib"],
            "checkpoint not found (/nonexistent.pt)",
        ),
        (
            ["predict", "/nonexistent.png", "--model", str(run / "best.pt")],
            "not found (/nonexistent.png): pass image files",
        ),
        (["predict", "/no/a.png", "/no/b.png", "--model", str(run / "best.pt")], "not found (/no/a.png, /no/b.png)"),
    ]
    code = (
        "import sys; from mnv2export.cli import main\n"
        f"for args in {[args for args, _ in cases]!r}:\n"
        "    assert main(args) == 1, args\n"
        "    print('--', file=sys.stderr)\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'onnxruntime') if m in sys.modules)\n"
        "assert not heavy, f'imported: {heavy}'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert r.returncode == 0, r.stderr
    said = r.stderr.split("--\n")[:-1]
    assert len(said) == len(cases), r.stderr
    for (args, expect), text in zip(cases, said):
        assert expect in _one_error_line(text), (args, text)


def _one_error_line(stderr):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(
    "args, expect",
    [
        (["train", "--data", "/nonexistent/folder", "--epochs", "1"], "data folder not found (/nonexistent/folder)"),
        (["train", "--data", "synth", "--epochs", "0"], "epochs = 0 is out of range"),
        (["train", "--data", "synth", "--width", "3"], "width = 3.0 is out of range"),
        (["train", "--data", "synth", "--lr", "-1"], "lr = -1.0 is out of range"),
        (["train", "--data", "synth", "--img-size", "4"], "--img-size = 4 is out of range"),
        (["train", "--data", "synth", "--batch-size", "-2"], "--batch-size = -2 is out of range"),
        (["train", "--data", "synth", "--device", "tpu"], "unknown --device 'tpu'"),
        (["train", "--config", "/nonexistent.toml"], "recipe file not found"),
        (["train", "--resume", "--out", "/nonexistent/run"], "nothing to resume"),
        (
            ["train", "--resume", "--overwrite", "--out", "/nonexistent/run"],
            "--overwrite and --resume contradict each other",
        ),
        (
            ["train", "--resume", "--out", "/nonexistent/run", "--config", "train/fashion_mnist_cpu.toml"],
            "--config is not read with --resume",
        ),
        (["train", "--data", "synth", "--threads", "-1"], "threads = -1 is out of range"),
        (
            ["train", "--config", "train/imagenet20_224.toml", "--data", "synth", "--epochs", "2"],
            "--warmup-epochs = 3.0 is out of range (train/imagenet20_224.toml)",
        ),
    ],
)
def test_user_errors_are_one_line_exit_1(args, expect):
    r = run(*args)
    assert r.returncode == 1, r.stderr
    line = _one_error_line(r.stderr)
    assert expect in line and ": " in line.removeprefix("error: ")  # what, then how to fix


def test_usage_errors_exit_2():
    r = run("train", "--epochs", "many")
    assert r.returncode == 2
    assert "--epochs" in _one_error_line(r.stderr)
    r = run("train", "--no-such-flag")
    assert r.returncode == 2 and "no-such-flag" in _one_error_line(r.stderr)


def test_an_unexpected_error_is_one_line_too(monkeypatch, capsys):
    """An error of no known kind (a bug, or one from a DataLoader worker, which quotes the worker's whole traceback in
    its message) prints its first line only, and how to see the rest."""
    import mnv2export.train as T

    def boom(*a, **k):
        raise ValueError(
            "Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n  File ..."
        )

    monkeypatch.setattr(T, "fit", boom)
    code = main(["train", "--data", "synth", "--epochs", "1", "--no-progress"])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 1 and line == (
        "error: unexpected ValueError: Caught ValueError in DataLoader worker process 0. "
        "(set MNV2_DEBUG=1 for the traceback, and report it)"
    )


def test_debug_shows_the_traceback():
    r = run("train", "--data", "/nonexistent/folder", env={"MNV2_DEBUG": "1"})
    assert r.returncode == 1 and "Traceback" in r.stderr and r.stderr.strip().splitlines()[-1].startswith("error: ")


def test_cuda_without_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    r = run("train", "--data", "synth", "--device", "cuda", "--out", str(tmp_path / "r"))
    assert r.returncode == 1
    line = _one_error_line(r.stderr)
    assert "CUDA was asked for" in line and "--device cpu" in line


def test_data_synth_and_train_on_it(tmp_path):
    runner = CliRunner()
    res = runner.invoke(
        app, ["data", "synth", str(tmp_path / "s"), "--classes", "3", "--per-class", "6", "--size", "32"]
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "s" / "train").iterdir()) == sorted(
        p.name for p in (tmp_path / "s" / "val").iterdir()
    )
    assert len(list((tmp_path / "s" / "train").rglob("*.png"))) == 18
    code = main(
        [
            "train",
            "--data",
            str(tmp_path / "s"),
            "--img-size",
            "32",
            "--width",
            "0.35",
            "--epochs",
            "1",
            "--workers",
            "0",
            "--no-plots",
            "--no-progress",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 0 and (tmp_path / "run" / "best.pt").is_file()


@pytest.mark.slow
def test_readme_smoke_command_learns(smoke_run):
    """The issue's smoke run: `mnv2 train --data synth --epochs 2` (run by the fixture, a subprocess) gets clearly
    above chance (10 classes: 10%) and writes every file of a run folder."""
    from mnv2export.checkpoint import load_checkpoint

    s = load_checkpoint(smoke_run / "best.pt").train_summary
    assert s["best_val_acc"] > 0.5 and load_checkpoint(smoke_run / "last.pt").train_summary["epoch"] == 2
    for name in (
        "best.pt",
        "last.pt",
        "metrics.csv",
        "config.json",
        "loss_curve.png",
        "kernels.png",
        "feature_maps_shallow.png",
        "feature_maps_deep.png",
        "confusion_matrix.png",
    ):
        assert (smoke_run / name).is_file(), name


def _commands(cmd, path=()):
    yield path, cmd
    if hasattr(cmd, "commands"):  # a group (typer's own click, not the click package's classes)
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))


def test_help_text_keeps_its_square_brackets():
    """Rich markup reads ``[model]`` as a style tag and drops it: every bracketed word a help text holds must be printed."""
    import re

    import typer

    checked = 0
    for path, cmd in _commands(typer.main.get_command(app)):
        texts = [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]
        tokens = {t for text in texts for t in re.findall(r"\[[a-z_]+\]", text.replace("\\[", "["))}
        if not tokens:
            continue
        r = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
        assert r.exit_code == 0, r.output
        for token in tokens:
            assert token in r.output and "\\" + token not in r.output, (
                path,
                token,
            )  # printed, and its escape not shown
        checked += 1
    assert checked  # the train command's --config help names [model], [data], [train]


# --------------------------------------------------------------------------------------------------- cli/options
def test_csv_list_and_floats():
    import typer

    from mnv2export.cli.options import csv_list, floats

    assert csv_list(" 1, 8,32", "--batch") == ["1", "8", "32"]
    for text in ("1,,2", "1, ,32", "1,8,", ",1", ""):  # an empty item is an error, not silently dropped
        with pytest.raises(typer.BadParameter, match="empty item"):
            csv_list(text, "--batch")
    assert floats("0.5,0.25,1", "--mean") == [0.5, 0.25, 1.0] and floats(None, "--mean") is None
    with pytest.raises(typer.BadParameter):
        floats("0.5,x", "--mean")


def test_train_on_a_folder_of_class_folders_with_val_split(tmp_path, capsys):
    """`mnv2 train --data PHOTOS --val-split 0.25 --exif-orientation` on <root>/<class>/*.png: the split is said,
    trained on, recorded in config.json and the checkpoint with the EXIF setting (so export and check read the same
    split, decoded alike), and resumable."""
    import json

    import numpy as np
    from PIL import Image

    from mnv2export.checkpoint import load_checkpoint

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "photos" / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
                tmp_path / "photos" / c / f"{i}.png"
            )
    out = tmp_path / "run"
    flags = [
        "--data",
        str(tmp_path / "photos"),
        "--val-split",
        "0.25",
        "--exif-orientation",
        "--img-size",
        "32",
        "--width",
        "0.35",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--no-plots",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(["train", *flags, "--epochs", "1"]) == 0
    data = json.loads((out / "config.json").read_text())["data"]
    assert data["val_split"] == 0.25 and data["exif_orientation"] is True
    assert load_checkpoint(out / "best.pt").data_config.exif_orientation is True
    summary = load_checkpoint(out / "best.pt").train_summary["data"]
    assert summary["train_images"] + summary["val_images"] == 24 and 2 <= summary["val_images"] <= 12, summary
    assert main(["train", "--resume", "--out", str(out), "--epochs", "2", "--no-progress", "--no-plots"]) == 0
    assert load_checkpoint(out / "last.pt").train_summary["data"] == summary


@pytest.mark.parametrize("command", ["train", "pipeline"])
def test_every_option_of_train_and_pipeline_is_in_a_help_panel(command):
    """Nearly 50 training options read as one list; --help groups them (Data, Model, Training, Hardware, Run; the pipeline's
    own in 'Export, check and bench'), as timm's train.py groups its arguments. An option added without a panel fails."""
    import typer.main

    from mnv2export.cli import app
    from mnv2export.cli.options import CHECKS, DATA, HARDWARE, MODEL, RUN, TRAINING

    cmd = typer.main.get_command(app).commands[command]
    panels = {p.name: getattr(p, "rich_help_panel", None) for p in cmd.params}
    assert not {name for name, panel in panels.items() if panel not in (DATA, MODEL, TRAINING, HARDWARE, RUN, CHECKS)}
    assert (
        panels["source"] == DATA
        and panels["width_mult"] == MODEL
        and panels["lr" if command == "train" else "epochs"] == TRAINING
    )
    assert panels["device"] == HARDWARE and panels["out"] == RUN


# --------------------------------------------------------------------------------------------------- default targets
def _fresh_project(root):
    """A project folder as a fresh clone has it: data/, weights/ and export/ holding their README only."""
    for name in ("data", "weights", "export"):
        (root / name).mkdir()
        (root / name / "README.md").write_text("placeholder\n")
    return root


def test_no_target_in_a_project_without_runs_is_one_line_before_torch(tmp_path):
    """`mnv2 export` (and the others) without a target, where nothing was trained or exported yet: one line saying
    how to get one, exit 1, said before torch is imported. `mnv2 train` without --data and no ImageFolder in data/
    asks for --data as before."""
    cases = [
        (["train"], "no data given"),
        (["export"], "no checkpoint given, and no run under weights/ holds a best.pt"),
        (
            ["export", "--format", "onnx", "--quantize"],
            "train one with `mnv2 train`, or name a checkpoint: mnv2 export weights/<run>/best.pt",
        ),
        (["visualize"], "or name a checkpoint: mnv2 visualize weights/<run>/best.pt"),
        (["bench", "--provider", "cuda"], "no target given, and no folder under export/ holds a manifest.json"),
        (["check"], "export one with `mnv2 export`, or name one: mnv2 check export/<run>"),
        (["info"], "or name one: mnv2 info export/<run>"),
        (["predict", "cat.png"], "or name one: mnv2 predict export/<run>"),
    ]
    code = (
        "import sys; from mnv2export.cli import main\n"
        f"for args in {[args for args, _ in cases]!r}:\n"
        "    assert main(args) == 1, args\n"
        "    print('--', file=sys.stderr)\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'onnxruntime') if m in sys.modules)\n"
        "assert not heavy, f'imported: {heavy}'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=_fresh_project(tmp_path))
    assert r.returncode == 0, r.stderr
    said = r.stderr.split("--\n")[:-1]
    assert len(said) == len(cases), r.stderr
    for (args, expect), text in zip(cases, said):
        assert expect in _one_error_line(text), (args, text)


def test_export_bench_info_predict_without_a_target_take_the_newest(trained_checkpoint, tmp_path, monkeypatch, capsys):
    """`mnv2 export --format onnx --quantize` in a project folder exports the newest run under weights/ and says so
    on its first line; then `mnv2 bench --provider cuda`, `mnv2 info` and `mnv2 predict IMAGE` take that export."""
    import shutil

    import torch
    from PIL import Image

    _fresh_project(tmp_path)
    for name, mtime in (("new", 2_000_000_000), ("old", 1_000_000_000)):  # the older one written last
        (tmp_path / "weights" / name).mkdir()
        best = shutil.copy(trained_checkpoint, tmp_path / "weights" / name / "best.pt")
        os.utime(best, (mtime, mtime))
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["export", "--format", "onnx", "--quantize"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert (
        err[0]
        == f"mnv2 export: no checkpoint given, taking {Path('weights/new/best.pt')} (the newest run under weights/)"
    ), err
    assert {p.name for p in (tmp_path / "export" / "new").iterdir()} == {
        "model.onnx",
        "model.int8.onnx",
        "manifest.json",
    }
    assert not (tmp_path / "export" / "old").exists()

    if not torch.cuda.is_available():
        assert main(["bench", "--provider", "cuda"]) == 1
        took, error = capsys.readouterr().err.splitlines()
        assert took == f"mnv2 bench: no target given, taking {Path('export/new')} (the newest export under export/)"
        assert error.startswith("error: CUDA was asked for but") and "--provider cpu" in error
    assert main(["info", "--no-layers"]) == 0
    out, err = capsys.readouterr()
    assert (
        err.splitlines()[0]
        == f"mnv2 info: no model given, taking {Path('export/new/model.onnx')} (from the newest export under export/)"
    )
    assert out.startswith(str(Path("export/new/model.onnx")))
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    assert main(["predict", "red.png", "--top-k", "1"]) == 0
    out, err = capsys.readouterr()
    assert "taking export/new/model.onnx" in err.splitlines()[0] and out.splitlines()[0].startswith(
        "# export/new/model.onnx (onnx, fp32, cpu)"
    )


def test_check_without_a_target_takes_artifacts_or_the_newest_export(tmp_path, monkeypatch, capsys):
    """`mnv2 check` alone checks the newest export folder against the checkpoint its manifest names; `mnv2 check
    --artifacts DIR` checks DIR so (before: both exited 2, 'Missing argument')."""
    _fresh_project(tmp_path)
    (tmp_path / "export" / "run").mkdir()
    (tmp_path / "export" / "run" / "manifest.json").write_text(
        '{"artifacts": {}, "source_checkpoint": {"path": "/nonexistent/best.pt", "sha256": "ab"}}'
    )
    monkeypatch.chdir(tmp_path)
    assert main(["check"]) == 1
    took, error = capsys.readouterr().err.splitlines()
    assert took == f"mnv2 check: no target given, taking {Path('export/run')} (the newest export under export/)"
    assert error.startswith(
        "error: no reference model for this folder: the source checkpoint /nonexistent/best.pt is gone"
    ), error
    assert main(["check", "--artifacts", "export/run"]) == 1
    assert _one_error_line(capsys.readouterr().err).startswith("error: no reference model for this folder")


@pytest.mark.slow
def test_the_three_commands_exactly_as_typed(tmp_path, monkeypatch, capsys):
    """The issue's journey, typed exactly so in a project folder, one after the other: `mnv2 train` finds the
    ImageFolder in data/ (default settings: 224 px, width 1.0, 10 epochs, on 4 tiny images), `mnv2 export --format
    onnx --quantize` the run it wrote, `mnv2 bench --provider cuda` the export (without a GPU: one error line, exit 1).
    Before, train asked for --data and the other two exited 2 ('Missing argument')."""
    import numpy as np
    import torch
    from PIL import Image

    rng = np.random.default_rng(0)
    _fresh_project(tmp_path)
    for split, n in (("train", 2), ("val", 1)):
        for c in ("cat", "dog"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / "data" / split / c / f"{i}.png"
                )
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()

    assert main(["train"]) == 0
    out, err = capsys.readouterr()
    assert (
        err.splitlines()[0]
        == "mnv2 train: no --data given, taking data/ (an ImageFolder: train/ and val/ hold class folders)"
    )
    (run,) = (tmp_path / "weights").glob("data-*/best.pt")
    assert f"-> {run.relative_to(tmp_path)}" in out

    assert main(["export", "--format", "onnx", "--quantize"]) == 0
    err = capsys.readouterr().err
    assert (
        err.splitlines()[0]
        == f"mnv2 export: no checkpoint given, taking {run.relative_to(tmp_path)} (the newest run under weights/)"
    )
    export = tmp_path / "export" / run.parent.name
    assert (export / "model.int8.onnx").is_file() and (export / "manifest.json").is_file()

    code = main(["bench", "--provider", "cuda"])
    if torch.cuda.is_available():
        assert code == 0
        return
    took, error = capsys.readouterr().err.splitlines()
    assert code == 1 and took.endswith(f"taking {export.relative_to(tmp_path)} (the newest export under export/)")
    assert error.startswith("error: CUDA was asked for but") and "GPU" in error


# --------------------------------------------------------------------------------------------------- Ctrl-C, --version, pipeline
@pytest.mark.parametrize(
    "command, library",
    [
        ("export", "mnv2export.export.export_all"),
        ("check", "mnv2export.check.check"),
        ("bench", "mnv2export.bench.run"),
        ("train", "mnv2export.train.fit"),
    ],
)
def test_ctrl_c_says_interrupted_and_exits_130(command, library, tmp_path, monkeypatch, capsys):
    """Ctrl-C (a KeyboardInterrupt) inside any command: `error: interrupted`, exit 130. Typer turned it into a silent
    exit 130: export and check printed nothing at all."""
    import importlib

    module, name = library.rsplit(".", 1)

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), name, ctrl_c)
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"x")
    args = {
        "export": ["export", str(ckpt)],
        "check": ["check", str(ckpt)],
        "bench": ["bench", str(ckpt)],
        "train": ["train", "--data", "synth", "--no-progress"],
    }[command]
    assert main(args) == 130
    assert capsys.readouterr().err.splitlines()[-1] == "error: interrupted"


def test_version_names_the_package_and_its_libraries(capsys):
    """`mnv2 --version`: the package's version from its metadata, then what a bug report needs (as `huggingface-cli
    env`): Python, torch, torchvision, onnx, onnxruntime and its providers."""
    from importlib.metadata import version

    import mnv2export
    from mnv2export.cli.version import library_version

    assert main(["--version"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"mnv2export {version('mnv2export')}" and mnv2export.__version__ == version("mnv2export")
    said = dict(line.removeprefix("- ").split(": ", 1) for line in lines[1:])
    assert (
        said["torch"] == version("torch")
        and said["torchvision"] == version("torchvision")
        and said["onnx"] == version("onnx")
    )
    assert said["onnxruntime"].startswith(__import__("onnxruntime").__version__)
    assert "CPUExecutionProvider" in said["onnxruntime providers"]
    assert library_version("no_such_library_here") == "not installed"


def test_version_answers_without_torch():
    code = "import sys; from mnv2export.cli import main; assert main(['--version']) == 0; assert 'torch' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("mnv2export ")


def test_pipeline_small_input_reaches_the_training(tmp_path, monkeypatch, capsys):
    """`mnv2 pipeline --small-input`, as `mnv2 train --small-input` (before: 'No such option', exit 2)."""
    import json

    import mnv2export.pipeline as P
    from mnv2export.errors import ConfigError

    def stop(result):  # the first step: what the run would train is settled and recorded by now
        raise ConfigError("stopped by the test", hint="-")

    monkeypatch.setitem(P.STEP_FUNCTIONS, P.STEPS[0], stop)
    for flag, expect in (("--small-input", True), ("--no-small-input", False)):
        out = tmp_path / flag
        assert main(["pipeline", "--data", "synth", "--device", "cpu", flag, "--out", str(out)]) == 1
        assert "stopped by the test" in capsys.readouterr().err
        assert json.loads((out / P.PIPELINE_FILE).read_text())["config"]["model"]["small_input"] is expect


@pytest.mark.parametrize("command", ["info", "predict"])
def test_json_dash_prints_the_json_instead_of_the_text(command, exported, tmp_path, capsys):
    """``--json PATH`` means one thing in every command: the result written to PATH, or printed for ``-``."""
    from PIL import Image

    model = str(exported.out_dir / "model.onnx")
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "red.png")
    args = [command, model] if command == "info" else [command, str(tmp_path / "red.png"), "--model", model]
    assert main([*args, "--json", "-"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert main([*args, "--json", str(tmp_path / "out.json")]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith(f"-> {tmp_path / 'out.json'}") and not out.lstrip().startswith("{")
    written = json.loads((tmp_path / "out.json").read_text())
    assert written.keys() == printed.keys()
