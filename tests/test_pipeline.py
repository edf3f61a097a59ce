"""mnv2 pipeline: every step end to end on a tiny setting; a failing step stops the run, named, earlier outputs kept."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from mnv2export.cli import main
from mnv2export.errors import ConfigError, DataError, ProviderUnavailable
from mnv2export.pipeline import STEPS, PipelineError, PipelineOptions, run_pipeline

# synth, 4 classes, 32 px, width 0.35, small-input variant (stride 8: at 32 px the standard stride 32 ends at 1x1 and
# learns poorly), no augmentation: ~99% in 3 short epochs, so INT8 agrees with FP32 and the check (a gate) passes
TINY = dict(
    data="synth",
    epochs=3,
    width=0.35,
    img_size=32,
    device="cpu",
    model={"small_input": True},
    data_settings={"synth_classes": 4, "synth_train_per_class": 64, "synth_val_per_class": 32, "train_aug": "none"},
    train={"batch_size": 16, "warmup_epochs": 0.0, "workers": 0, "progress": False},
)
# TorchScript and ONNX only: the .pt2 and .pte compiles would add about a minute (test_pt2_pte_commands.py has them)
TINY_OPTIONS = PipelineOptions(
    export_formats="torchscript,onnx",
    calib_size=64,
    check_samples=128,
    bench_batches=(1, 4),
    bench_warmup=1,
    bench_iters=3,
)
TINY_FLAGS = [
    "--data",
    "synth",
    "--epochs",
    "1",
    "--width",
    "0.35",
    "--img-size",
    "32",
    "--device",
    "cpu",
    "--synth-classes",
    "4",
    "--synth-per-class",
    "24",
    "--batch-size",
    "16",
    "--no-progress",
]


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    return run_pipeline(**TINY, out=tmp_path_factory.mktemp("pipeline") / "tiny", options=TINY_OPTIONS)


def test_every_step_runs_and_writes_its_outputs(tiny_pipeline):
    r = tiny_pipeline
    run = r.run_dir
    assert r.passed and r.failed_step is None
    assert [(s.name, s.status) for s in r.steps] == [(s, "ok") for s in STEPS]
    for rel in (
        "pipeline.json",
        "data_samples.png",
        "weights/best.pt",
        "weights/last.pt",
        "weights/metrics.csv",
        "weights/loss_curve.png",
        "export/model.torchscript.pt",
        "export/model.onnx",
        "export/model.int8.onnx",
        "export/model.fp16.onnx",
        "export/manifest.json",
        "check.json",
        "bench.json",
        "bench.csv",
        "bench.png",
        "report.md",
    ):
        assert (run / rel).is_file(), rel
    for s in r.steps:  # every output a step claims is there
        assert all((run / o).is_file() for o in s.outputs), s
    record = json.loads((run / "pipeline.json").read_text())
    assert record["passed"] and [s["status"] for s in record["steps"]] == ["ok"] * len(STEPS)
    assert record["config"]["model"]["width_mult"] == 0.35 and record["config"]["data"]["img_size"] == 32
    assert (
        record["config"]["model"]["num_classes"] == 4 == len(record["data"]["class_names"])
    )  # the data's count, not the default
    threads = record["config"]["train"]["threads"]
    assert threads >= 1 and json.loads((run / "bench.json").read_text())["settings"]["threads"] == threads
    check = json.loads((run / "check.json").read_text())
    assert check["passed"] and {row["artifact"] for row in check["rows"]} == set(r.manifest.artifacts)
    bench = json.loads((run / "bench.json").read_text())
    assert {(row["format"], row["batch"]) for row in bench["rows"]} == {
        (f, b) for f in ("eager", "torchscript", "onnx", "int8", "fp16") for b in (1, 4)
    }
    assert all(row["status"] == "ok" and row["iters"] == 3 for row in bench["rows"])
    with Image.open(run / "bench.png") as img:
        assert img.format == "PNG"


def test_the_report_reads_top_to_bottom(tiny_pipeline):
    run = tiny_pipeline.run_dir
    text = (run / "report.md").read_text()
    assert text.startswith(f"# Pipeline report: {run.name}\n") and "**Result: passed.**" in text
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Data",
        "## Model",
        "## Training",
        "## Export",
        "## Parity check",
        "## Benchmark",
        "## What to ship",
        "## Files",
        "## Using the artifacts",
    ]
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
    with pytest.raises(ConfigError, match="name and out both given"):
        run_pipeline(name="x", out=tmp_path / "b")
    with pytest.raises(ConfigError, match="calib_size = 0 is out of range"):
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


def test_overwrite_removes_nothing_until_every_setting_is_checked(tmp_path):
    from mnv2export.layout import PIPELINE_FILE

    earlier = tmp_path / "earlier"
    (earlier / "weights").mkdir(parents=True)
    (earlier / "weights" / "best.pt").write_bytes(b"earlier run")
    (earlier / PIPELINE_FILE).write_text("{}")
    with pytest.raises(ConfigError, match="calib_size = 0 is out of range"):
        run_pipeline(out=earlier, overwrite=True, device="cpu", options=PipelineOptions(calib_size=0))
    assert (earlier / "weights" / "best.pt").read_bytes() == b"earlier run"


def test_a_taken_run_folder_is_refused_before_torch_is_imported(tmp_path):
    """The run folder is the first thing checked: `--name` / `--out` mistakes answer without the seconds torch's
    import costs."""
    import subprocess
    import sys

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    code = f"""
import sys
from mnv2export.errors import ConfigError, DataError, ProviderUnavailable
from mnv2export.pipeline import run_pipeline
for kwargs in (dict(name="a", out="b"), dict(out={str(tmp_path / "taken")!r})):
    try:
        run_pipeline(**kwargs)
    except ConfigError as e:
        print(e)
    else:
        raise SystemExit("no error")
assert "torch" not in sys.modules, "torch was imported"
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "name and out both given" in r.stdout and "run folder exists and is not empty" in r.stdout


def test_cli_failing_export_names_the_step_and_keeps_the_training(tmp_path, capsys):
    out = tmp_path / "run"
    empty = tmp_path / "no-calibration-images"  # a folder (a missing one is refused before any step), holding no image
    empty.mkdir()
    code = main(["pipeline", *TINY_FLAGS, "--out", str(out), "--calib-data", str(empty)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("error: pipeline step 'export' failed: calibration data holds no images"), err[-1]
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


def test_cli_class_index_and_init_from_reach_the_run(monkeypatch):
    """The fine-tuning journey (a wnid-named folder, ImageNet weights) through the pipeline: --class-index names the
    classes, --init-from starts from the weights and --freeze-blocks keeps the first blocks as they are, as with
    `mnv2 train`."""
    import mnv2export.pipeline as P

    seen = {}

    def fake_run_pipeline(data, **kwargs):
        seen["cfg"] = P.pipeline_config(
            data, model=kwargs["model"], data_settings=kwargs["data_settings"], train=kwargs["train"]
        )
        raise ConfigError("stop here", hint="-")

    monkeypatch.setattr(P, "run_pipeline", fake_run_pipeline)
    assert (
        main(
            [
                "pipeline",
                "--data",
                "synth",
                "--device",
                "cpu",
                "--class-index",
                "idx.json",
                "--init-from",
                "w.pth",
                "--freeze-blocks",
                "19",
            ]
        )
        == 1
    )
    assert seen["cfg"].data.class_index == "idx.json" and seen["cfg"].train.init_from == "w.pth"
    assert seen["cfg"].train.freeze_blocks == 19


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


# --------------------------------------------------------------------------------------------------- pipeline
@pytest.fixture
def no_step_runs(monkeypatch):
    """Every step replaced by one that fails the test: a setting found only by a step (after minutes of training)
    shows as a PipelineError naming that step instead of the settings error, and no test trains by mistake."""
    import mnv2export.pipeline as P

    def ran(result):
        raise AssertionError("a step ran before the settings were all checked")

    for step in STEPS:
        monkeypatch.setitem(P.STEP_FUNCTIONS, step, ran)


@pytest.mark.parametrize("providers", [("cpu", "cuda"), ("cuda",), ("all", "cuda")])
def test_an_explicit_cuda_is_checked_before_any_step(tmp_path, monkeypatch, no_step_runs, providers):
    """`mnv2 pipeline --provider cpu,cuda` without CUDA trained and exported, then failed its check step. Now it is the
    benchmark's own up-front error (`mnv2 bench --provider cuda`), before anything is trained or the folder made."""
    from mnv2export import device

    monkeypatch.setattr(device, "cuda_unavailable_reason", lambda: "no GPU here")
    out = tmp_path / "r"
    with pytest.raises(ProviderUnavailable) as info:
        run_pipeline(out=out, device="cpu", options=PipelineOptions(providers=providers))
    assert info.value.one_line().startswith("CUDA was asked for but no GPU here"), info.value.one_line()
    assert info.value.one_line({"providers": "--provider"}).endswith("or use --provider cpu")  # as the CLI says it
    assert not out.exists()


def test_cli_explicit_cuda_is_one_line_before_any_step(tmp_path, monkeypatch, capsys, no_step_runs):
    from mnv2export import device

    monkeypatch.setattr(device, "cuda_unavailable_reason", lambda: "no GPU here")
    out = tmp_path / "r"
    assert main(["pipeline", *TINY_FLAGS, "--provider", "cpu,cuda", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: CUDA was asked for but no GPU here"), err
    assert "pipeline step" not in err[0] and not out.exists()


def test_a_missing_calibration_folder_is_checked_before_any_step(tmp_path, no_step_runs):
    """`--calib-data nodir` trained first, then failed the export step."""
    out = tmp_path / "r"
    with pytest.raises(DataError, match="calibration data not found"):
        run_pipeline(out=out, device="cpu", options=PipelineOptions(calib_data=str(tmp_path / "nodir")))
    (tmp_path / "a-file.png").write_bytes(b"x")
    with pytest.raises(DataError, match="calibration data is a file"):
        run_pipeline(out=out, device="cpu", options=PipelineOptions(calib_data=str(tmp_path / "a-file.png")))
    assert not out.exists()


def test_cli_missing_calibration_folder_is_one_line_before_any_step(tmp_path, capsys, no_step_runs):
    out = tmp_path / "r"
    assert main(["pipeline", *TINY_FLAGS, "--calib-data", str(tmp_path / "nodir"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: calibration data not found ({tmp_path / 'nodir'}): pass --calib-data with a folder of images (or synth)"
    ]
    assert not out.exists()


def test_check_samples_have_the_check_steps_range(tmp_path, no_step_runs):
    """`--samples 200000` trained and exported, then failed the check step ('samples = 200000 is out of range')."""
    from mnv2export.check import MAX_SAMPLES
    from mnv2export.pipeline import check_options

    check_options(PipelineOptions(check_samples=MAX_SAMPLES))
    with pytest.raises(ConfigError, match=f"samples = {MAX_SAMPLES + 1} is out of range.*between 1 and {MAX_SAMPLES}"):
        check_options(PipelineOptions(check_samples=MAX_SAMPLES + 1))
    with pytest.raises(ConfigError, match="samples = "):
        run_pipeline(out=tmp_path / "r", device="cpu", options=PipelineOptions(check_samples=MAX_SAMPLES + 1))
    assert not (tmp_path / "r").exists()


def test_an_empty_provider_is_a_usage_error_as_in_bench_and_check(tmp_path, capsys, no_step_runs):
    """`--provider ""` silently meant the default; `mnv2 bench` / `mnv2 check` reject it (exit 2)."""
    from mnv2export.pipeline import resolve_providers

    out = tmp_path / "r"
    assert main(["pipeline", *TINY_FLAGS, "--provider", "", "--out", str(out)]) == 2
    assert "--provider" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ConfigError, match="unknown provider"):  # the library alike: no provider is not the default
        resolve_providers("cpu", ())


def test_pipeline_options_are_checked():
    from mnv2export.pipeline import PipelineOptions, check_options

    check_options(PipelineOptions(bench_batches=(1,), threads=1, check_samples=1))
    for bad in (dict(bench_batches=(0,)), dict(threads=0), dict(check_samples=0)):
        with pytest.raises(ConfigError):
            check_options(PipelineOptions(**bad))


def test_run_folder_names_and_overwrite(tmp_path):
    from mnv2export.pipeline import run_folder

    for bad in ("..", ".", "a/b", ""):
        with pytest.raises(ConfigError, match="plain folder name"):
            run_folder(bad, None, "synth", False)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a pipeline run"):
        run_folder(None, other, "synth", True)
    assert (other / "precious.txt").is_file()


def test_providers_are_checked_and_deduplicated():
    from mnv2export.pipeline import resolve_providers

    assert resolve_providers("cpu", ("cpu", "cpu")) == (("cpu",), [])
    with pytest.raises(ConfigError, match="unknown provider"):
        resolve_providers("cpu", ("tpu",))


def test_provider_all_means_cuda_only_where_it_runs(monkeypatch):
    """bench and check take --provider all (cpu, and cuda where it exists); the pipeline refused it."""
    from mnv2export import device, runtime
    from mnv2export.pipeline import resolve_providers

    monkeypatch.setattr(device, "cuda_unavailable_reason", lambda: "no GPU here")
    providers, notes = resolve_providers("cpu", ("all",))
    assert providers == ("cpu",) and notes == ["--provider all: check and bench on CPU only (no GPU here)"]
    with pytest.raises(
        ProviderUnavailable, match="CUDA was asked for but no GPU here"
    ):  # an explicit cuda must run: checked now
        resolve_providers("cpu", ("all", "cuda"))
    monkeypatch.setattr(device, "cuda_unavailable_reason", lambda: None)
    monkeypatch.setattr(runtime, "onnx_provider_problem", lambda provider: None)
    assert resolve_providers("cpu", ("all",)) == (("cpu", "cuda"), [])
    from mnv2export.bench import sweep

    monkeypatch.setattr(sweep, "_provider_problem", lambda provider, family: None)  # the benchmark's own check passes
    assert resolve_providers("cpu", ("all", "cuda")) == (("cpu", "cuda"), [])
    assert resolve_providers("cpu", ("cuda", "cpu")) == (("cuda", "cpu"), [])


def test_an_interrupted_step_is_the_failed_step(tmp_path):
    from mnv2export.pipeline import STEPS, PipelineOptions, PipelineResult, StepRecord, pipeline_config

    steps = [StepRecord(s, "ok" if i < 2 else "not run") for i, s in enumerate(STEPS)]
    steps[2].status = "interrupted"
    r = PipelineResult(tmp_path, pipeline_config(device="cpu"), PipelineOptions(), ("cpu",), steps, "now")
    assert r.failed_step == STEPS[2] and not r.passed


def test_explicit_zero_and_false_settings_are_kept():
    """'explicit values over ... the pipeline's defaults': an explicit 0 or False is a value, not 'unset'."""
    from mnv2export.pipeline import pipeline_config

    cfg = pipeline_config(device="cpu", train={"label_smoothing": 0.0, "workers": 0, "ema": False})
    assert cfg.train.label_smoothing == 0.0 and cfg.train.workers == 0 and cfg.train.ema is False


def test_training_on_a_cpu_gets_one_loader_worker_unless_one_is_given(monkeypatch):
    """The pipeline's CPU default (one data-loader worker beside the model's threads) is applied after the settings
    are checked; an explicit --workers, a recipe, or CUDA keep theirs."""
    import torch

    from mnv2export.config import TrainConfig
    from mnv2export.pipeline import pipeline_config

    assert pipeline_config(device="cpu").train.workers == 1
    assert pipeline_config(device="cpu", train={"workers": 3}).train.workers == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pipeline_config(device="auto").train.workers == TrainConfig().workers


def test_a_recipe_is_not_overridden_by_the_pipeline_defaults():
    """PIPELINE_DEFAULTS: 'under explicit flags (and a recipe, when one is given none of these apply)'."""
    from mnv2export.config import run_config
    from mnv2export.pipeline import pipeline_config

    recipe = run_config(
        None,
        {"width_mult": 1.0},
        {"source": "synth", "img_size": 32, "synth_classes": 3},
        {"epochs": 7, "device": "cpu"},
    )
    cfg = pipeline_config(recipe=recipe)
    assert cfg.model.width_mult == 1.0 and cfg.train.epochs == 7 and cfg.data.synth_classes == 3


def test_default_threads_leaves_one_core(monkeypatch):
    import os

    from mnv2export import pipeline

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert pipeline.default_threads() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert pipeline.default_threads() == 1


def test_the_check_is_a_gate(monkeypatch, tmp_path):
    """Module docstring: 'A check that runs but finds an artifact out of tolerance is a failed ``check`` step'."""
    from mnv2export import check, pipeline
    from mnv2export.errors import ParityError

    bad_row = SimpleNamespace(passed=False, artifact="model.int8.onnx", provider="cpu")
    report = SimpleNamespace(passed=False, rows=[bad_row], to_json=lambda path: Path(path).write_text("{}"))
    monkeypatch.setattr(check, "check", lambda *a, **k: report)
    result = SimpleNamespace(
        train=SimpleNamespace(best="best.pt"),
        run_dir=tmp_path,
        providers=("cpu",),
        options=pipeline.PipelineOptions(),
        config=pipeline.pipeline_config(device="cpu"),
        step=lambda name: SimpleNamespace(outputs=[]),
        parity=None,
    )
    with pytest.raises(ParityError, match="1 of 1 artifact checks"):
        pipeline._step_check(result)


def test_the_bench_step_needs_one_measured_row_not_all(monkeypatch, tmp_path):
    """A row that could not run (named in bench.json) does not fail the step while another row was measured; a
    sweep in which no row could be measured does, naming the first row's reason."""
    from mnv2export import bench, pipeline
    from mnv2export.bench.result import BenchResult, BenchRow
    from mnv2export.errors import Mnv2Error

    failed = BenchRow("int8", "cpu", 1, status="error", reason="ORT refused the model")
    good = BenchRow(
        "onnx",
        "cpu",
        1,
        p50_ms=1.0,
        p90_ms=1.1,
        p95_ms=1.2,
        p99_ms=1.3,
        min_ms=0.9,
        max_ms=1.4,
        mean_ms=1.05,
        std_ms=0.1,
        iters=3,
        throughput=950.0,
    )
    step = SimpleNamespace(outputs=[])
    result = SimpleNamespace(
        run_dir=tmp_path,
        providers=("cpu",),
        options=pipeline.PipelineOptions(),
        config=pipeline.pipeline_config(device="cpu"),
        step=lambda name: step,
        bench=None,
    )
    monkeypatch.setattr(bench, "run", lambda *a, **k: BenchResult([failed, good], machine={}))
    assert pipeline._step_bench(result) == ["bench.json", "bench.csv", "bench.png"]
    assert (tmp_path / "bench.png").is_file()
    monkeypatch.setattr(bench, "run", lambda *a, **k: BenchResult([failed], machine={}))
    with pytest.raises(Mnv2Error, match="no benchmark row could be measured .int8/cpu: ORT refused the model"):
        pipeline._step_bench(result)
    assert step.outputs == ["bench.json", "bench.csv"]


# --------------------------------------------------------------------------------------------------- report
def _result(tmp_path, statuses):
    from mnv2export.pipeline import STEPS, PipelineOptions, PipelineResult, StepRecord, pipeline_config

    steps = [StepRecord(s, st, 1.0 if st != "not run" else None) for s, st in zip(STEPS, statuses)]
    return PipelineResult(
        tmp_path, pipeline_config(device="cpu"), PipelineOptions(), ("cpu",), steps, "now", wall_seconds=75.0
    )


def test_report_header_says_passed_failed_or_incomplete(tmp_path):
    from mnv2export import report

    assert "**Result: passed.** Every step finished in 1 min 15 s" in report._header(_result(tmp_path, ["ok"] * 6))
    assert "**Result: incomplete**" in report._header(
        _result(tmp_path, ["ok", "ok", "not run", "not run", "not run", "not run"])
    )
    failed = _result(tmp_path, ["ok", "failed", "not run", "not run", "not run", "not run"])
    failed.steps[1].error = "boom"
    assert "**Result: FAILED at step 'train'** - boom" in report._header(failed)


def test_report_durations():
    from mnv2export.report import _duration

    assert (
        _duration(None) == "?"
        and _duration(59.94) == "59.9 s"
        and _duration(60) == "1 min 0 s"
        and _duration(125.4) == "2 min 5 s"
    )


def test_report_files_and_usage_list_only_what_exists(tmp_path):
    from mnv2export import report

    r = _result(tmp_path, ["ok"] * 6)
    (tmp_path / "check.json").write_text("{}")
    files = report._files(r)
    assert "[report.md](report.md)" in files and "[check.json](check.json)" in files
    assert "bench.png" not in files and "weights/best.pt" not in files
    assert report._usage(r) == ""  # no export/model.onnx: no commands to use it
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "model.onnx").write_bytes(b"")
    assert "mnv2 predict" in report._usage(r)


def test_report_data_and_training_sections(tmp_path):
    import dataclasses

    from mnv2export import report

    r = _result(tmp_path, ["ok"] * 6)
    names = [f"c{i}" for i in range(25)]
    r.data = {
        "class_names": names,
        "num_classes": 25,
        "train_images": 1,
        "val_images": 1,
        "resize": 36,
        "interpolation": "bilinear",
        "img_size": 32,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "train_aug": "none",
    }
    data = report._data(r)
    assert "`c19`, ... (5 more)" in data and "`c20`" not in data
    r.data["class_names"] = names[:20]
    assert "more)" not in report._data(r)
    assert "EXIF" not in data
    r.config = dataclasses.replace(r.config, data=r.config.data.replace(source="photos", exif_orientation=True))
    assert (
        "Preprocessing (validation, stored in every artifact): turn upright by the EXIF orientation tag, resize"
        in report._data(r)
    )
    r.train = SimpleNamespace(
        summary={"epoch": 1, "best_val_acc": 0.95, "best_epoch": 1, "wall_seconds": 3.0},
        history=[{"epoch": 1, "train_loss": 1.0, "val_loss": 1.0, "val_acc": 0.95, "lr": 0.1, "seconds": 3.0}],
    )
    training = report._training(r)
    assert "Best validation top-1: **95.00%**" in training and "1 epoch on" in training


# --------------------------------------------------------------------------------------------------- found by a mutation sweep
def test_a_recipe_keeps_its_own_data_source():
    """pipeline_config: 'explicit values over the recipe'. The Python default ``data='synth'`` is not an explicit value,
    yet ``pipeline_config(recipe=r)`` (and ``run_pipeline(recipe=r)``) turns a fashion-mnist recipe into synth at 28 px.
    The CLI is not affected (it passes ``data=None``)."""
    from mnv2export.config import run_config
    from mnv2export.pipeline import pipeline_config

    recipe = run_config(None, {}, {"source": "fashion-mnist"}, {"device": "cpu"})
    assert pipeline_config(recipe=recipe).data.source == "fashion-mnist"


def test_report_duration_never_shows_60_seconds():
    from mnv2export.report import _duration

    assert _duration(119.6) == "2 min 0 s"


@pytest.mark.parametrize(
    "bad", [dict(bench_iters=0), dict(bench_warmup=-1), dict(bench_formats=("nope",)), dict(bench_duration=2.0)]
)
def test_bench_settings_are_checked_before_any_step(tmp_path, bad):
    """pipeline docstring: 'Settings are all checked before the first step (a bad flag is a plain ConfigError)'.
    Here the data step runs (and fails on a missing folder) before the bad bench setting is ever looked at; with
    real data the pipeline would train, export and check first."""
    from mnv2export.pipeline import PipelineOptions, run_pipeline

    with pytest.raises(ConfigError):
        run_pipeline(str(tmp_path / "no-such-folder"), out=tmp_path / "r", device="cpu", options=PipelineOptions(**bad))
