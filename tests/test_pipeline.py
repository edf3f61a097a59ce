"""mnv2 pipeline: every step end to end on a tiny setting; a failing step stops the run, named, earlier outputs kept."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from mnv2export.cli import main
from mnv2export.errors import ConfigError
from mnv2export.pipeline import STEPS, PipelineError, PipelineOptions, run_pipeline

# synth, 4 classes, 32 px, width 0.35, small-input variant (stride 8: at 32 px the standard stride 32 ends at 1x1 and
# learns poorly), no augmentation: ~99% in 3 short epochs, so INT8 agrees with FP32 and the check (a gate) passes
TINY = dict(
    data="synth", epochs=3, width=0.35, img_size=32, device="cpu", model={"small_input": True},
    data_settings={"synth_classes": 4, "synth_train_per_class": 64, "synth_val_per_class": 32, "train_aug": "none"},
    train={"batch_size": 16, "warmup_epochs": 0.0, "workers": 0, "progress": False},
)
TINY_OPTIONS = PipelineOptions(calib_size=64, check_samples=128, bench_batches=(1, 4), bench_warmup=1, bench_iters=3)
TINY_FLAGS = ["--data", "synth", "--epochs", "1", "--width", "0.35", "--img-size", "32", "--device", "cpu", "--synth-classes", "4",
              "--synth-per-class", "24", "--batch-size", "16", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    return run_pipeline(**TINY, out=tmp_path_factory.mktemp("pipeline") / "tiny", options=TINY_OPTIONS)


def test_every_step_runs_and_writes_its_outputs(tiny_pipeline):
    r = tiny_pipeline
    run = r.run_dir
    assert r.passed and r.failed_step is None
    assert [(s.name, s.status) for s in r.steps] == [(s, "ok") for s in STEPS]
    for rel in ("pipeline.json", "data_samples.png", "weights/best.pt", "weights/last.pt", "weights/metrics.csv", "weights/loss_curve.png",
                "export/model.torchscript.pt", "export/model.onnx", "export/model.int8.onnx", "export/model.fp16.onnx",
                "export/manifest.json", "check.json", "bench.json", "bench.csv", "bench.png", "report.md"):
        assert (run / rel).is_file(), rel
    for s in r.steps:  # every output a step claims is there
        assert all((run / o).is_file() for o in s.outputs), s
    record = json.loads((run / "pipeline.json").read_text())
    assert record["passed"] and [s["status"] for s in record["steps"]] == ["ok"] * len(STEPS)
    assert record["config"]["model"]["width_mult"] == 0.35 and record["config"]["data"]["img_size"] == 32
    assert record["config"]["model"]["num_classes"] == 4 == len(record["data"]["class_names"])  # the data's count, not the default
    threads = record["config"]["train"]["threads"]
    assert threads >= 1 and json.loads((run / "bench.json").read_text())["settings"]["threads"] == threads
    check = json.loads((run / "check.json").read_text())
    assert check["passed"] and {row["artifact"] for row in check["rows"]} == set(r.manifest.artifacts)
    bench = json.loads((run / "bench.json").read_text())
    assert {(row["format"], row["batch"]) for row in bench["rows"]} == {(f, b) for f in ("eager", "torchscript", "onnx", "int8", "fp16") for b in (1, 4)}
    assert all(row["status"] == "ok" and row["iters"] == 3 for row in bench["rows"])
    with Image.open(run / "bench.png") as img:
        assert img.format == "PNG"


def test_the_report_reads_top_to_bottom(tiny_pipeline):
    run = tiny_pipeline.run_dir
    text = (run / "report.md").read_text()
    assert text.startswith(f"# Pipeline report: {run.name}\n") and "**Result: passed.**" in text
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == ["## Data", "## Model", "## Training", "## Export", "## Parity check", "## Benchmark", "## Files", "## Using the artifacts"]
    links = re.findall(r"\]\(([^)]+)\)", text)
    for picture in ("data_samples.png", "weights/loss_curve.png", "weights/kernels.png", "bench.png"):
        assert picture in links
    for link in links:  # relative, and each one resolves inside the run folder
        assert not link.startswith("/") and (run / link).is_file(), link
    assert "| `model.int8.onnx` | int8 | cpu | pass |" in text  # the parity table
    assert re.search(r"\| int8 \| cpu \| 1 \| [0-9.]+ \|", text)  # the benchmark table
    from mnv2export.info import describe

    assert f"- Parameters: {describe(run / 'weights' / 'best.pt').params:,} " in text  # the model summary


def test_a_failing_data_step_is_named(tmp_path):
    out = tmp_path / "r"
    with pytest.raises(PipelineError) as info:
        run_pipeline(str(tmp_path / "no-such-folder"), epochs=1, out=out, device="cpu", options=TINY_OPTIONS)
    e = info.value
    assert e.step == "data" and e.one_line().startswith("pipeline step 'data' failed: data folder not found")
    record = json.loads((out / "pipeline.json").read_text())
    assert record["failed_step"] == "data" and [s["status"] for s in record["steps"]] == ["failed"] + ["not run"] * 5
    assert "FAILED at step 'data'" in (out / "report.md").read_text()
    # the same folder again: refused, unless --overwrite (it is a pipeline folder)
    with pytest.raises(ConfigError, match="run folder exists"):
        run_pipeline(str(tmp_path / "no-such-folder"), out=out, device="cpu")
    with pytest.raises(PipelineError):
        run_pipeline(str(tmp_path / "no-such-folder"), out=out, device="cpu", overwrite=True)


def test_settings_are_checked_before_any_step(tmp_path):
    with pytest.raises(ConfigError, match="width"):
        run_pipeline(width=3.0, out=tmp_path / "a")
    with pytest.raises(ConfigError, match="--name and --out"):
        run_pipeline(name="x", out=tmp_path / "b")
    with pytest.raises(ConfigError, match="calibration size"):
        run_pipeline(out=tmp_path / "c", options=PipelineOptions(calib_size=0))
    with pytest.raises(ConfigError, match="threads = 0"):
        run_pipeline(out=tmp_path / "c", options=PipelineOptions(threads=0))
    other = tmp_path / "someone-elses"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigError, match="not a pipeline run"):
        run_pipeline(out=other, overwrite=True)
    assert (other / "thesis.tex").read_text() == "precious"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_cli_failing_export_names_the_step_and_keeps_the_training(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["pipeline", *TINY_FLAGS, "--out", str(out), "--calib-data", str(tmp_path / "no-calibration-images")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("error: pipeline step 'export' failed: calibration data not found"), err[-1]
    assert str(out) in err[-1]  # where the earlier outputs are
    assert (out / "weights" / "best.pt").is_file() and (out / "data_samples.png").is_file()
    assert not (out / "export" / "manifest.json").exists() and not (out / "check.json").exists()
    record = json.loads((out / "pipeline.json").read_text())
    assert [s["status"] for s in record["steps"]] == ["ok", "ok", "failed", "not run", "not run", "not run"]
    report = (out / "report.md").read_text()
    assert "FAILED at step 'export'" in report and "## Training" in report and "## Parity check" not in report


def test_cli_usage(capsys):
    assert main(["pipeline", "--bench-batch", "1,x"]) == 2
    assert "--bench-batch" in capsys.readouterr().err
    assert main(["pipeline", "--help"]) == 0
    assert "report.md" in capsys.readouterr().out


def test_a_recipe_device_is_not_replaced_by_auto(tmp_path):
    """`mnv2 pipeline --config train/imagenet20_224.toml` trains where the recipe says (cuda): on a machine without a
    GPU that is an error before any step, never a quiet CPU run."""
    import torch

    from mnv2export.config import load_recipe
    from mnv2export.errors import Mnv2Error

    recipe = load_recipe(Path(__file__).resolve().parent.parent / "train" / "imagenet20_224.toml")
    assert recipe.train.device == "cuda"
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the recipe's device is valid here")
    with pytest.raises(Mnv2Error, match="(?i)cuda"):
        run_pipeline(None, recipe=recipe, out=tmp_path / "r")
    assert not (tmp_path / "r").exists()
