"""The .pt2 and .pte formats through the commands, as any artifact: `mnv2 export --format pt2,executorch --quantize`
writes them with the manifest, and check, bench, predict and info take them (tiny model, one export for the module).
The exporters' own round trips, metadata and errors are in test_pt2.py and test_executorch.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from mnv2export import formats
from mnv2export.cli import main
from mnv2export.errors import ConfigError, ProviderUnavailable
from mnv2export.export.names import DEFAULT_GROUPS
from mnv2export.layout import PT2_FILE, PTE_FILE, PTE_INT8_FILE

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("executorch") is None, reason="needs the mobile extra (executorch)"
)
NEW = {PT2_FILE: ("pt2", "fp32"), PTE_FILE: ("pte", "fp32"), PTE_INT8_FILE: ("pte", "int8")}


@pytest.fixture(scope="module")
def exported_new(trained_checkpoint, tmp_path_factory):
    """The trained checkpoint exported to .pt2 and .pte (FP32, INT8), with the FP32 ONNX model beside them."""
    import torch

    from mnv2export.export import export_all

    out = tmp_path_factory.mktemp("pt2_pte") / "run"
    threads = torch.get_num_threads()
    try:
        return export_all(trained_checkpoint, out, formats="onnx,pt2,executorch", quantize=True, calib_size=96)
    finally:
        torch.set_num_threads(threads)


def test_export_writes_both_formats_with_their_manifest_entries(exported_new):
    artifacts = exported_new.artifacts
    for name, (kind, precision) in NEW.items():
        entry = artifacts[name]
        assert (entry["format"], entry["precision"]) == (kind, precision), name
        assert (exported_new.out_dir / name).stat().st_size == entry["size_bytes"] > 0
    assert artifacts[PT2_FILE]["export_settings"]["device"] == "cpu"
    pte = artifacts[PTE_FILE]["export_settings"]
    assert pte["dynamic_batch"] == {"min": 1, "max": 32} and isinstance(pte["undelegated_call_function_nodes"], int)
    int8 = artifacts[PTE_INT8_FILE]["export_settings"]
    assert int8["calibration_images"] == 96 and int8["calibration_data"] and int8["top1_agreement_fp32_calib"] >= 0.9
    assert not list(exported_new.out_dir.glob(".*"))  # no temporary file or work folder left (AOTInductor's neither)


def test_each_file_is_told_by_its_content_and_read_back(exported_new):
    out = exported_new.out_dir
    for name, (kind, precision) in NEW.items():
        fmt = formats.for_file(out / name)
        assert fmt.kind == kind, name
        meta = fmt.read_metadata(out / name)
        assert (meta["format"], meta["precision"]) == (kind, precision)
    renamed = out.parent / "no_suffix"
    renamed.write_bytes((out / PTE_FILE).read_bytes())  # by content, not by name
    assert formats.for_file(renamed).name == "executorch"
    renamed.unlink()


def test_check_passes_every_new_artifact_with_the_onnx_bounds(exported_new, trained_checkpoint):
    from mnv2export.check import check

    report = check(trained_checkpoint, exported_new.out_dir, samples=16)
    rows = {r.artifact: r for r in report.rows}
    assert report.passed, [(r.artifact, r.failures) for r in report.rows]
    for name, (_, precision) in NEW.items():
        assert rows[name].status == "pass" and rows[name].precision == precision
    assert rows[PT2_FILE].tolerance == rows["model.onnx"].tolerance  # FP32: the same elementwise bounds as ONNX
    assert rows[PTE_INT8_FILE].metrics["top1_agreement"] >= 90


def test_bench_times_the_new_rows_with_size_and_export_time(exported_new):
    from mnv2export.bench import run

    result = run(exported_new.out_dir, formats="all", providers="cpu", batches=(1, 3), iters=3, warmup=1)
    rows = {(r.format, r.batch): r for r in result.rows}
    for fmt in ("pt2", "executorch", "executorch-int8"):  # `all` brings them because the folder holds their files
        for batch in (1, 3):
            row = rows[(fmt, batch)]
            assert row.ok and row.iters == 3 and row.session_s is not None, (fmt, row.reason)
        entry = exported_new.artifacts[formats.get(fmt).file]
        assert row.file_mb == round(entry["size_bytes"] / 1e6, 3) and row.export_s == entry["seconds"]


def test_bench_says_executorch_runs_on_the_cpu_only(exported_new):
    from mnv2export.bench import run

    result = run(exported_new.out_dir, formats="executorch", providers="cpu,cuda", batches=(1,), iters=2, warmup=1)
    cuda = next(r for r in result.rows if r.provider == "cuda")
    assert cuda.status == "unavailable" and "ExecuTorch" in cuda.reason and "CPU" in cuda.reason


def test_a_cpu_package_asked_for_cuda_is_a_one_line_provider_error(exported_new):
    with pytest.raises(ProviderUnavailable) as err:
        formats.PT2.load(exported_new.out_dir / PT2_FILE, "cuda")
    assert "compiled for cpu and cannot run on cuda" in err.value.one_line()
    with pytest.raises(ProviderUnavailable, match="run on the CPU"):
        formats.PTE.load(exported_new.out_dir / PTE_FILE, "cuda")


def test_predict_and_info_take_them_like_any_artifact(exported_new, tmp_path, capsys):
    from PIL import Image

    from mnv2export.predict import predict

    image = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (200, 60, 20)).save(image)
    onnx = predict([image], exported_new.out_dir / "model.onnx", top_k=2).predictions[0]
    for name, (kind, _) in NEW.items():
        got = predict([image], exported_new.out_dir / name, top_k=2)
        assert got.format == kind and got.predictions[0].label == onnx.label, name
        tol = 0.1 if "int8" in name else 1e-4
        assert abs(got.predictions[0].top[0]["probability"] - onnx.top[0]["probability"]) < tol, name
        capsys.readouterr()
        assert main(["info", str(exported_new.out_dir / name), "--no-layers", "--json", "-"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["metadata"]["format"] == kind and info["params"] > 0, name


def test_the_runners_take_any_batch_size(exported_new):
    from mnv2export.runtime import load_artifact

    x = np.random.default_rng(0).standard_normal((70, 3, 32, 32), dtype=np.float32)  # over the .pte's 32
    want = load_artifact(exported_new.out_dir / "model.onnx", "cpu").run(x)
    for name in (PT2_FILE, PTE_FILE):
        got = load_artifact(exported_new.out_dir / name, "cpu").run(x)
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4, name


def test_export_options_refused_before_any_work():
    from mnv2export.export import check_export_options

    with pytest.raises(ConfigError, match=r"^device says what the .pt2 is compiled for"):
        check_export_options("onnx", False, False, None, 256, "minmax", None, device="cuda")
    with pytest.raises(ConfigError, match="unknown"):
        check_export_options("pt2", False, False, None, 256, "minmax", None, device="tpu")
    every = check_export_options("all", False, False, None, 256, "minmax", None)
    assert every.groups == ("torchscript", "onnx", "pt2", "executorch") and every.skipped == ()
    default = check_export_options(DEFAULT_GROUPS, False, False, None, 256, "minmax", None)
    assert default.groups == ("torchscript", "onnx")


def test_all_skips_a_format_this_install_lacks_and_says_why(monkeypatch):
    """`all` (the pipeline's export) writes what is installed; the manifest's settings and the report say what was
    skipped and why. Named, the same format is the one-line error (next test)."""
    from types import SimpleNamespace

    from mnv2export.export import check_export_options
    from mnv2export.pipeline import PipelineOptions, export_settings
    from mnv2export.report import _export

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "executorch" else real(name, *a))
    assert export_settings(PipelineOptions()) == {"formats": "all", "quantize": True, "fp16": True}
    options = check_export_options("all", True, True, None, 256, "minmax", None)
    assert options.groups == ("torchscript", "onnx", "pt2") and [g for g, _ in options.skipped] == ["executorch"]
    why = dict(options.skipped)["executorch"]
    assert 'pip install -c constraints.txt -e ".[mobile]"' in why
    data = {"bn_fold": {"max_abs_diff": 0.0, "inputs": "x"}, "settings": {"skipped": {"executorch": why}}}
    text = _export(SimpleNamespace(manifest=SimpleNamespace(data=data, artifacts={})))
    assert f"Skipped: executorch, because {why}." in text


def test_a_missing_extra_is_one_line_naming_the_install_command(trained_checkpoint, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "executorch" else real(name, *a))
    assert main(["export", str(trained_checkpoint), "--format", "executorch", "--out", str(tmp_path / "x")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "error: the executorch format needs executorch, which this install lacks: install it with "
        'python -m pip install -c constraints.txt -e ".[mobile]"'
    ]
    assert not Path(tmp_path / "x").exists()
