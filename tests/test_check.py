"""`mnv2 check`: good artifacts pass; corrupted ones fail with exit 1 and the right row named; bad input is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

from mnv2export import check
from mnv2export.check import DEFAULT_TOLERANCES, ParityRow, Tolerance, parse_providers, tf32_disabled, with_overrides
from mnv2export.check.compare import compare, judge
from mnv2export.check.targets import metadata_problems
from mnv2export.cli import main
from mnv2export.errors import ArtifactError, ConfigError, DataError, ProviderUnavailable
from mnv2export.layout import FP16_FILE, INT8_FILE, MANIFEST_FILE, ONNX_FILE, TORCHSCRIPT_FILE

METRICS = (
    "max_abs",
    "mean_abs",
    "max_rel",
    "cosine",
    "top1_agreement",
    "top5_agreement",
    "acc_reference",
    "acc_artifact",
    "acc_drop_pts",
)
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens where there is no GPU")


@pytest.fixture(autouse=True)
def _fresh_cli_log_handler():
    """`mnv2` installs its log handler once, on the sys.stderr of the first call; under capsys that stream belongs to
    an earlier test (and is closed). Let each test's CLI call install it on its own stderr."""
    import logging

    logger = logging.getLogger("mnv2export")
    for h in [h for h in logger.handlers if getattr(h, "_mnv2", False)]:
        logger.removeHandler(h)
    yield


def _folder(exported, dest, files: dict[str, str]):
    """A copy of the export holding ``files`` (new name -> the artifact it starts as a copy of), with a manifest listing
    exactly those (each with its source's entry)."""
    dest.mkdir(parents=True)
    manifest = json.loads((exported.out_dir / MANIFEST_FILE).read_text())
    for name, source in files.items():
        shutil.copy(exported.out_dir / source, dest / name)
    manifest["artifacts"] = {name: manifest["artifacts"][source] for name, source in files.items()}
    (dest / MANIFEST_FILE).write_text(json.dumps(manifest))
    return dest


def _reseal(folder):
    """Record each listed file's current size and sha256 in the manifest, as an export that wrote these (broken) files
    would: the check must then catch them by what they answer, not by a changed hash."""
    from mnv2export.fileio import sha256_file

    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    for name, entry in manifest["artifacts"].items():
        entry.update(size_bytes=(folder / name).stat().st_size, sha256=sha256_file(folder / name))
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("data ")]  # the data log line
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --------------------------------------------------------------------------------------------------- passing
def test_passing_artifacts_pass_with_every_metric(exported, trained_checkpoint, tmp_path, capsys):
    folder = _folder(exported, tmp_path / "art", {n: n for n in (TORCHSCRIPT_FILE, ONNX_FILE, FP16_FILE)})
    out = tmp_path / "check.json"
    code = main(["check", str(trained_checkpoint), "--artifacts", str(folder), "--samples", "48", "--json", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    report = json.loads(out.read_text())
    assert report["passed"] is True and report["inputs"]["real"] == 48 and report["inputs"]["labelled"] is True
    assert report["inputs"]["generated"] == 72 and report["inputs"]["batch_sizes"] == [1, 7, 64]
    rows = {r["artifact"]: r for r in report["rows"]}
    assert set(rows) == {TORCHSCRIPT_FILE, ONNX_FILE, FP16_FILE}
    for name, row in rows.items():
        assert row["status"] == "pass" and row["passed"] and row["provider"] == "cpu" and row["failures"] == [], row
        assert all(row["metrics"][k] is not None for k in METRICS if k != "top5_agreement"), name
        assert row["metrics"]["top5_agreement"] is None  # 4 classes: all of them are in any top 5
        assert set(row["metrics"]["max_abs_by_batch"]) == {"1", "7", "64"}  # every batch size really ran
        assert row["tolerance"] == report["tolerances"][row["precision"]] and 0 < row["metrics"]["tol_ratio"] <= 1
    for name in (TORCHSCRIPT_FILE, ONNX_FILE):  # the FP32 bar
        m = rows[name]["metrics"]
        assert m["max_abs"] < 1e-4 and m["top1_agreement"] == 100.0 and m["acc_drop_pts"] == 0.0
    assert rows[ONNX_FILE]["session_providers"] == ["CPUExecutionProvider"]
    assert any("real images from synth" in n for n in report["notes"])
    for name in rows:
        assert name in stdout
    assert "passed" in stdout


def test_int8_is_judged_by_agreement_and_accuracy_and_the_report_api(exported, trained_checkpoint):
    """INT8 is not elementwise-close by design; it is judged by top-1 agreement and accuracy drop on real images.
    (This 4-class, 32 px model has near-ties, so its INT8 may honestly miss the 99% bar: the row says by how much.)"""
    report = check.check(trained_checkpoint, exported.out_dir, samples=48, batch_sizes=(5, 64))
    rows = {r.artifact: r for r in report.rows}
    assert all(isinstance(r, ParityRow) for r in report.rows) and len(rows) == 4
    int8 = rows[INT8_FILE]
    m = int8.metrics
    assert m["max_abs"] > 1e-4 and "elementwise_failures" not in m and m["agreement_on"] == "real"
    ok = m["top1_agreement"] >= 99.0 and m["acc_drop_pts"] <= 1.0
    assert int8.status == ("pass" if ok else "fail") and report.passed == (
        ok and all(r.status == "pass" for r in report.rows)
    )
    if m["top1_agreement"] < 99.0:
        assert any(f.startswith(f"top-1 agreement {m['top1_agreement']:.2f}% < 99% (by ") for f in int8.failures)
    if m["acc_drop_pts"] > 1.0:
        assert any(f.startswith(f"accuracy drop {m['acc_drop_pts']:.2f} points > 1 (by ") for f in int8.failures)
    assert set(rows[ONNX_FILE].metrics["max_abs_by_batch"]) == {"5", "64"}
    md = report.to_markdown()
    assert md.count("\n") == 2 + len(report.rows) and f"`{INT8_FILE}`" in md and "| pass |" in md
    d = report.to_dict()
    json.dumps(d, allow_nan=False)  # strict JSON
    assert d["rows"][0]["passed"] == report.rows[0].passed and d["units"]["acc_drop_pts"].startswith("points")


# --------------------------------------------------------------------------------------------------- corrupted artifacts
def _corrupt_weight(src, dst):
    model = onnx.load(str(src))
    init = next(i for i in model.graph.initializer if i.name == "features.4.conv.1.0.weight")  # a depthwise 3x3
    w = numpy_helper.to_array(init).copy()
    w.flat[0] += 0.05 * np.abs(w).max()  # one weight, by 5% of its layer's largest
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(dst))


def _wrong_bn_torchscript(ckpt_path, src, dst):
    """BatchNorm left unfolded, its running statistics wrong, traced and embedded by the export module."""
    from mnv2export.checkpoint import load_checkpoint
    from mnv2export.export.torchscript import export_torchscript
    from mnv2export.runtime import read_metadata

    model = load_checkpoint(ckpt_path).build_model()
    bn = model.features[3].conv[1][1]
    assert isinstance(bn, torch.nn.BatchNorm2d)
    with torch.no_grad():
        bn.running_var.mul_(1.5)
    export_torchscript(model, torch.zeros(2, 3, 32, 32), {**read_metadata(src), "bn_folded": False}, dst)


def _wrong_metadata(src, dst, key_path, value):
    from mnv2export.export.onnx import get_metadata, set_metadata

    model = onnx.load(str(src))
    meta = get_metadata(model)
    target = meta
    for k in key_path[:-1]:
        target = target[k]
    target[key_path[-1]] = value
    set_metadata(model, meta)
    onnx.save(model, str(dst))


def _static_batch(src, dst):
    model = onnx.load(str(src))
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.ClearField("dim_param")
    dim.dim_value = 64
    onnx.save(model, str(dst))


def test_corrupted_artifacts_fail_and_are_named(exported, trained_checkpoint, tmp_path, capsys):
    files = {
        ONNX_FILE: ONNX_FILE,
        "weight.onnx": ONNX_FILE,
        "bn.torchscript.pt": TORCHSCRIPT_FILE,
        "mean.onnx": ONNX_FILE,
        "toplevel_std.onnx": ONNX_FILE,
        "static.onnx": ONNX_FILE,
    }
    folder = _folder(exported, tmp_path / "art", files)
    src = exported.out_dir
    _corrupt_weight(src / ONNX_FILE, folder / "weight.onnx")
    _wrong_bn_torchscript(trained_checkpoint, src / TORCHSCRIPT_FILE, folder / "bn.torchscript.pt")
    meta = json.loads(next(p.value for p in onnx.load(str(src / ONNX_FILE)).metadata_props if p.key == "mnv2_metadata"))
    wrong_mean = [m + 0.1 for m in meta["mean"]]
    _wrong_metadata(src / ONNX_FILE, folder / "mean.onnx", ["mean"], wrong_mean)
    _wrong_metadata(
        folder / "mean.onnx", folder / "mean.onnx", ["data_config", "mean"], wrong_mean
    )  # as a broken export writes it
    _wrong_metadata(
        src / ONNX_FILE, folder / "toplevel_std.onnx", ["std"], [0.5, 0.5, 0.5]
    )  # what a non-Python consumer reads
    _static_batch(src / ONNX_FILE, folder / "static.onnx")
    _reseal(folder)

    out = tmp_path / "check.json"
    code = main(["check", str(trained_checkpoint), "--artifacts", str(folder), "--samples", "32", "--json", str(out)])
    stdout = capsys.readouterr().out
    assert code == 1
    rows = {r["artifact"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows[ONNX_FILE]["status"] == "pass"  # only the broken rows fail
    assert not json.loads(out.read_text())["passed"]

    weight = rows["weight.onnx"]
    assert weight["status"] == "fail" and " logits exceed both atol 0.0001 and rtol 0.001" in weight["failures"][0]
    assert weight["metrics"]["max_abs"] > 1e-4 and "x atol" in weight["failures"][0]
    bn = rows["bn.torchscript.pt"]
    assert (
        bn["status"] == "fail"
        and any("exceed both atol" in f for f in bn["failures"])
        and bn["metrics"]["max_abs"] > 1e-3
    )
    mean = rows["mean.onnx"]
    assert mean["status"] == "fail"
    assert any(f.startswith("metadata mean is") for f in mean["failures"]) and any(
        "data_config.mean" in f for f in mean["failures"]
    )
    assert any("exceed both atol" in f for f in mean["failures"])  # the real images really were preprocessed wrongly
    std = rows["toplevel_std.onnx"]
    assert std["status"] == "fail" and std["failures"] == [
        "metadata std is [0.5, 0.5, 0.5], the checkpoint's " + json.dumps(meta["std"])
    ]
    static = rows["static.onnx"]
    assert static["status"] == "error" and "fails at batch size" in static["reason"]
    for name in ("weight.onnx", "bn.torchscript.pt", "mean.onnx", "toplevel_std.onnx", "static.onnx"):
        assert f"{name} on cpu:" in stdout, name  # named below the table with what broke
    assert "FAILED" in stdout


def test_flags_override_the_default_tolerances(exported, trained_checkpoint, tmp_path, capsys):
    tols = with_overrides(atol=1e-3, min_top1_agreement=95, max_acc_drop_pts=0.5)
    assert (
        tols["fp32"].atol == 1e-3
        and tols["fp16"].atol == 1e-3
        and tols["fp32"].rtol == 1e-3
        and tols["fp16"].rtol == 5e-2
    )
    assert tols["fp16"].atol_scaled and not tols["fp32"].atol_scaled
    assert tols["int8"].atol is None and tols["int8"].max_acc_drop_pts == 0.5 and tols["fp32"].max_acc_drop_pts is None
    assert all(t.min_top1_agreement == 95 for t in tols.values())
    with pytest.raises(ConfigError, match="min_top1_agreement = 101"):
        with_overrides(min_top1_agreement=101)
    folder = _folder(exported, tmp_path / "art", {ONNX_FILE: ONNX_FILE})
    code = main(
        [
            "check",
            str(trained_checkpoint),
            "--artifacts",
            str(folder),
            "--samples",
            "8",
            "--atol",
            "1e-12",
            "--rtol",
            "1e-12",
            "--json",
            str(tmp_path / "c.json"),
        ]
    )
    assert code == 1
    row = json.loads((tmp_path / "c.json").read_text())["rows"][0]
    assert row["status"] == "fail" and "exceed both atol 1e-12 and rtol 1e-12" in row["failures"][0]
    assert row["tolerance"]["atol"] == 1e-12


# --------------------------------------------------------------------------------------------------- bad input: one line, exit 1
def test_bad_input_is_one_line_exit_1(exported, trained_checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"not a png")
    (tmp_path / "broken" / "b.jpg").write_bytes(b"")
    base = ["check", str(trained_checkpoint), "--artifacts", str(exported.out_dir)]
    cases = [
        (["check", str(trained_checkpoint), "--artifacts", str(tmp_path / "nope")], "artifacts folder not found"),
        (
            ["check", str(trained_checkpoint), "--artifacts", str(tmp_path / "empty")],
            "no manifest.json in the artifacts folder",
        ),
        ([*base, "--data", str(tmp_path / "nope")], "data folder not found"),
        ([*base, "--data", str(tmp_path / "empty")], "data folder holds no images"),
        ([*base, "--data", str(tmp_path / "broken")], "none of the 2 images drawn from"),
        ([*base, "--provider", "rocm"], "unknown --provider rocm"),
        ([*base, "--samples", "0"], "samples = 0 is out of range"),
        (["check", str(tmp_path / "missing.pt")], "checkpoint not found"),
    ]
    for args, expect in cases:
        assert main(args) == 1, args
        line = _one_error_line(capsys.readouterr().err)
        assert expect in line and ": " in line.removeprefix("error: "), line
    assert main([*base, "--samples", "many"]) == 2  # a malformed command line is a usage error
    assert "--samples" in _one_error_line(capsys.readouterr().err)


def test_default_artifacts_folder_is_export_run(trained_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArtifactError, match="the default export/<run>") as info:
        check.check(trained_checkpoint)
    assert info.value.path == str(tmp_path.joinpath("export", "run").relative_to(tmp_path))


def test_an_export_folder_alone_is_checked_against_the_checkpoint_its_manifest_names(
    exported, trained_checkpoint, tmp_path, capsys
):
    folder = _folder(exported, tmp_path / "art", {n: n for n in (TORCHSCRIPT_FILE, ONNX_FILE)})
    out = tmp_path / "check.json"
    assert main(["check", str(folder), "--samples", "16", "--json", str(out)]) == 0, capsys.readouterr().out
    report = json.loads(out.read_text())
    source = str(Path(trained_checkpoint).resolve())
    assert report["passed"] and report["artifacts_dir"] == str(folder) and report["checkpoint"] == source
    assert report["checkpoint_sha256"] == exported.data["source_checkpoint"]["sha256"]
    assert {r["artifact"]: r["status"] for r in report["rows"]} == {TORCHSCRIPT_FILE: "pass", ONNX_FILE: "pass"}
    assert (
        f"reference: {source}, the source checkpoint that manifest.json names (the same file: same SHA-256)"
        in report["notes"]
    )
    assert "reference: " in capsys.readouterr().out


def _orphan(exported, dest, change):
    folder = _folder(exported, dest, {ONNX_FILE: ONNX_FILE})
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    change(manifest["source_checkpoint"])
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    return folder


def test_an_export_folder_without_its_unchanged_source_checkpoint_is_refused(exported, trained_checkpoint, tmp_path):
    """A folder alone has no reference model unless its recorded source is still there, byte for byte: never another
    checkpoint that happens to sit at that path."""
    changed = tmp_path / "edited" / "best.pt"
    changed.parent.mkdir()
    changed.write_bytes(Path(trained_checkpoint).read_bytes() + b"\0")
    cases = {
        "gone": (
            lambda s: s.update(path=str(tmp_path / "moved" / "best.pt")),
            f"the source checkpoint {tmp_path / 'moved' / 'best.pt'} is gone",
        ),
        "changed": (
            lambda s: s.update(path=str(changed)),
            f"the source checkpoint {changed} changed since the export (SHA-256 differs)",
        ),
        "unhashed": (
            lambda s: s.pop("sha256"),
            f"manifest.json records no SHA-256 of the source checkpoint {Path(trained_checkpoint).resolve()}",
        ),
        "unnamed": (lambda s: s.pop("path"), "manifest.json names no source checkpoint"),
    }
    for name, (change, why) in cases.items():
        folder = _orphan(exported, tmp_path / name, change)
        with pytest.raises(ArtifactError) as info:
            check.check(folder, samples=4)
        assert info.value.what == f"no reference model for this folder: {why}", info.value.what
        assert (
            info.value.path == str(folder)
            and info.value.hint == f"pass the checkpoint it was exported from, with {{artifacts_dir}} {folder}"
        )
        assert check.check(
            trained_checkpoint, folder, samples=4
        ).passed  # with the checkpoint named, the same folder checks
    with pytest.raises(ConfigError, match="two artifacts folders"):
        check.check(exported.out_dir, exported.out_dir, samples=4)


def test_unlabelled_folder_and_unreadable_images(exported, trained_checkpoint, tmp_path):
    from PIL import Image

    data = tmp_path / "imgs"
    (data / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(data / "nested" / f"{i}.png")
    (data / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    folder = _folder(exported, tmp_path / "art", {ONNX_FILE: ONNX_FILE})
    report = check.check(trained_checkpoint, folder, data=str(data))
    assert report.inputs["real"] == 3 and report.inputs["labelled"] is False and report.passed
    assert "acc_reference" not in report.rows[0].metrics
    assert any("1 unreadable skipped" in n and "no labels" in n for n in report.notes)
    with pytest.raises(DataError):
        check.check(trained_checkpoint, folder, data=str(data / "broken.jpg"))


# --------------------------------------------------------------------------------------------------- providers
def test_parse_providers():
    assert parse_providers("cpu") == [("cpu", True)]
    assert parse_providers("all") == [("cpu", True), ("cuda", False)]
    assert parse_providers("cpu,cuda") == [("cpu", True), ("cuda", True)]
    assert parse_providers(("all", "cuda")) == [("cpu", True), ("cuda", True)]
    for bad in ("rocm", "", "cpu,tpu"):
        with pytest.raises(ConfigError, match="unknown provider"):
            parse_providers(bad)


def test_an_empty_provider_item_is_a_usage_error(trained_checkpoint, exported, capsys):
    """`--provider cpu,` is a usage error (exit 2), as bench's --batch / --provider and pipeline's lists are."""
    assert main(["check", str(trained_checkpoint), "--artifacts", str(exported.out_dir), "--provider", "cpu,"]) == 2
    assert "empty item" in capsys.readouterr().err


@no_cuda
def test_cuda_asked_for_on_a_cpu_machine(exported, trained_checkpoint, tmp_path, capsys):
    folder = _folder(exported, tmp_path / "art", {ONNX_FILE: ONNX_FILE, TORCHSCRIPT_FILE: TORCHSCRIPT_FILE})
    assert main(["check", str(trained_checkpoint), "--artifacts", str(folder), "--provider", "cuda"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "CUDA was asked for but" in line and "--provider cpu" in line
    with pytest.raises(ProviderUnavailable):
        check.check(trained_checkpoint, folder, providers="cpu,cuda", samples=4)
    # `all`: CUDA rows are reported unavailable with the reason; the CPU rows decide
    report = check.check(trained_checkpoint, folder, providers="all", samples=8)
    assert report.passed
    cuda = [r for r in report.rows if r.provider == "cuda"]
    assert len(cuda) == 2 and all(
        r.status == "unavailable" and "CUDA was asked for but" in r.reason and not r.metrics for r in cuda
    )
    assert all(r.status == "pass" for r in report.rows if r.provider == "cpu")
    assert any(n.startswith("CUDA rows not run") for n in report.notes) and not any("TF32" in n for n in report.notes)


def test_tf32_is_disabled_inside_and_restored_after(monkeypatch):
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    before = torch.backends.cudnn.conv.fp32_precision
    with tf32_disabled():
        assert (
            torch.backends.cuda.matmul.fp32_precision == "ieee" and torch.backends.cudnn.conv.fp32_precision == "ieee"
        )
        import os

        assert os.environ["NVIDIA_TF32_OVERRIDE"] == "0"
    assert torch.backends.cudnn.conv.fp32_precision == before and "NVIDIA_TF32_OVERRIDE" not in __import__("os").environ


@pytest.mark.cuda
def test_cuda_rows_match_the_cpu_reference_with_tf32_off(exported, trained_checkpoint):
    report = check.check(trained_checkpoint, exported.out_dir, providers="cuda", samples=32)
    assert report.passed, [(r.artifact, r.failures, r.reason) for r in report.rows]
    assert all(r.provider == "cuda" for r in report.rows)
    assert all(r.session_providers[0] == "CUDAExecutionProvider" for r in report.rows if r.format == "onnx")
    assert any("TF32 disabled" in n for n in report.notes)


# --------------------------------------------------------------------------------------------------- --debug-int8
@pytest.mark.slow
def test_debug_int8_names_layers(exported, trained_checkpoint, tmp_path, capsys):
    folder = _folder(exported, tmp_path / "art", {ONNX_FILE: ONNX_FILE, INT8_FILE: INT8_FILE})
    out = tmp_path / "c.json"
    code = main(
        [
            "check",
            str(trained_checkpoint),
            "--artifacts",
            str(folder),
            "--samples",
            "16",
            "--debug-int8",
            "--json",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    assert code == (
        0 if report["passed"] else 1
    )  # the tiny model's INT8 may miss 99% agreement: debugging runs either way
    dbg = report["int8_debug"]
    assert dbg["int8"] == INT8_FILE and dbg["samples"] == 16 and dbg["tensors_compared"] > 20
    assert len(dbg["layers"]) == 10 and all(
        t["layer"].split()[0] in ("Conv", "Clip", "Add", "Gemm") for t in dbg["layers"]
    )
    assert any("features." in t["layer"] for t in dbg["layers"])
    lost = [t["lost_db"] for t in dbg["layers"]]
    assert lost == sorted(lost, reverse=True)
    assert 10 < dbg["output_sqnr_db"] < 80 and dbg["weights"][0]["sqnr_db"] <= dbg["weights"][-1]["sqnr_db"]
    assert "dB lost here" in capsys.readouterr().out


@pytest.mark.slow
def test_a_model_trained_by_mnv2_train_passes_every_row(tmp_path, smoke_run):
    """The README's smoke run (synth, 10 classes, 64 px, width 1.0, 2 epochs), exported in every format: each row,
    INT8 included, passes the default tolerances (the synth figures in benchmarks/RESULTS.md come from this)."""
    run, art = smoke_run, tmp_path / "export"
    assert main(["export", str(run / "best.pt"), "--quantize", "--fp16", "--out", str(art)]) == 0
    out = tmp_path / "check.json"
    assert main(["check", str(run / "best.pt"), "--artifacts", str(art), "--samples", "200", "--json", str(out)]) == 0
    rows = {r["artifact"]: r for r in json.loads(out.read_text())["rows"]}
    assert len(rows) == 4 and all(r["status"] == "pass" for r in rows.values())
    for name in (TORCHSCRIPT_FILE, ONNX_FILE):
        assert rows[name]["metrics"]["max_abs"] < 1e-4 and rows[name]["metrics"]["top1_agreement"] == 100.0


# --------------------------------------------------------------------------------------------------- the judgement, by hand
def _logits(pred: np.ndarray, n_classes: int = 4) -> np.ndarray:
    """Logits whose argmax is ``pred`` (clear margins)."""
    out = np.zeros((len(pred), n_classes), np.float32)
    out[np.arange(len(pred)), pred] = 5.0
    return out


def _int8_case(change: str):
    """100 labelled real images; the reference gets 95 right. The artifact changes 3 answers: 'worse' turns 3 right
    answers wrong, 'better' turns 3 wrong answers right (agreement 97% either way)."""
    labels = np.arange(100) % 4
    ref_pred = labels.copy()
    ref_pred[:5] = (labels[:5] + 1) % 4  # 5 wrong
    art_pred = ref_pred.copy()
    if change == "worse":
        art_pred[10:13] = (labels[10:13] + 1) % 4
    else:
        art_pred[:3] = labels[:3]
    return _logits(ref_pred), _logits(art_pred), labels


@pytest.mark.parametrize("change, drop, fails", [("worse", 3.0, True), ("better", -3.0, False)])
def test_int8_accuracy_drop_is_judged_and_signed(change, drop, fails):
    """With the agreement bar lowered to 90% (so that it does not decide), a 3-point accuracy loss must fail the
    default 1-point bound, and a 3-point gain must not (drop = reference - artifact)."""
    ref, out, labels = _int8_case(change)
    tol = with_overrides(min_top1_agreement=90)["int8"]
    m = compare(ref, out, n_real=100, labels=labels, used=np.full(100, 64), tol=tol)
    assert m["top1_agreement"] == 97.0 and m["acc_drop_pts"] == pytest.approx(drop)
    failures = judge(m, tol, "int8")
    assert bool(failures) is fails, failures
    if fails:
        assert failures[0].startswith("accuracy drop 3.00 points > 1")


def test_top5_agreement_is_given_only_where_it_can_fall_below_100():
    """With 4 classes every class is in the top 5, so the figure would be 100% whatever the artifact answers: it is
    left out. With 10 it counts the samples whose reference class is in the artifact's top 5."""
    tol = DEFAULT_TOLERANCES["int8"]
    ref4 = _logits(np.arange(8) % 4)
    assert compare(ref4, -ref4, n_real=8, labels=None, used=np.full(8, 7), tol=tol)["top5_agreement"] is None
    ref = np.tile(np.arange(10.0), (4, 1))  # reference class 9 for every sample
    out = ref.copy()
    out[1] = ref[1, ::-1]  # class 9 last: out of the top 5
    out[2, [9, 5]] = out[2, [5, 9]]  # class 9 fifth: in the top 5, not first
    m = compare(ref, out, n_real=4, labels=None, used=np.full(4, 7), tol=tol)
    assert m["top1_agreement"] == 50.0 and m["top5_agreement"] == 75.0


def test_int8_without_real_images_fails_with_pass_data():
    """README: 'Without any real images, INT8 fails with "pass --data"' (even if the generated tensors agree)."""
    ref = _logits(np.arange(20) % 4)
    tol = DEFAULT_TOLERANCES["int8"]
    m = compare(ref, ref.copy(), n_real=0, labels=None, used=np.full(20, 7), tol=tol)
    failures = judge(m, tol, "int8")
    assert len(failures) == 1 and "pass --data" in failures[0]


def test_nonfinite_logits_fail_every_precision():
    """A NaN logit must fail a row even where no elementwise bound applies (INT8), and say so."""
    ref = _logits(np.arange(8) % 4)
    out = ref.copy()
    out[3, 3] = np.nan  # on the top class: np.argmax still picks it, so agreement and accuracy stay 100%
    for precision in ("fp32", "fp16", "int8"):
        tol = DEFAULT_TOLERANCES[precision]
        m = compare(ref, out, n_real=8, labels=np.arange(8) % 4, used=np.full(8, 7), tol=tol)
        failures = judge(m, tol, precision)
        assert any("NaN or infinite" in f for f in failures), (precision, failures)


def test_error_rows_fail_the_check():
    """A row that could not run (damaged file, static batch axis) is not a pass."""
    assert not ParityRow("m.onnx", "onnx", "fp32", "cpu", status="error", reason="x").passed
    assert not ParityRow("m.onnx", "onnx", "fp32", "cpu", status="fail").passed
    assert ParityRow("m.onnx", "onnx", "fp32", "cuda", status="unavailable").passed


def test_an_error_row_alone_makes_the_check_fail(exported, trained_checkpoint, tmp_path):
    folder = tmp_path / "art"
    folder.mkdir()
    manifest = json.loads((exported.out_dir / MANIFEST_FILE).read_text())
    manifest["artifacts"] = {ONNX_FILE: manifest["artifacts"][ONNX_FILE]}  # listed, file missing
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    report = check.check(trained_checkpoint, folder, samples=4)
    assert [r.status for r in report.rows] == ["error"] and report.passed is False


def _small_ckpt():
    from mnv2export.checkpoint import Checkpoint
    from mnv2export.config import DataConfig, ModelConfig
    from mnv2export.model import build_model

    cfg = ModelConfig(num_classes=3, width_mult=0.35)
    return Checkpoint(cfg, DataConfig(img_size=32), ["a", "b", "c"], build_model(cfg).state_dict(), {"epoch": 1}, {})


@pytest.mark.parametrize("class_names", [["c", "b", "a"], ["a", "b"], ["a", "b", "c", "d"]])
def test_metadata_class_names_must_match_the_checkpoint(class_names):
    """Wrong or missing class names do not change a logit, so only the metadata check can catch them."""
    ckpt = _small_ckpt()
    meta = {**ckpt.metadata(), "class_names": class_names}
    problems = metadata_problems(meta, ckpt)
    assert len(problems) == 1 and problems[0].startswith("metadata class_names differs first at index"), problems
    assert metadata_problems(ckpt.metadata(), ckpt) == []


def test_class_name_mismatch_names_the_first_differing_index_and_both_lengths():
    """Long names with a common prefix: the message must show where they differ, not two equal truncated prefixes."""
    ckpt = _small_ckpt()
    names = [f"a_rather_long_class_name_number_{i:03d}" for i in range(3)]
    ckpt.class_names = names
    swapped = [names[0], names[2], names[1]]
    assert metadata_problems({**ckpt.metadata(), "class_names": swapped}, ckpt) == [
        f'metadata class_names differs first at index 1: "{names[2]}", the checkpoint\'s "{names[1]}"'
    ]
    assert metadata_problems({**ckpt.metadata(), "class_names": names[:2]}, ckpt) == [
        f"metadata class_names differs first at index 2: absent, the checkpoint's \"{names[2]}\" (2 entries, the checkpoint's 3)"
    ]
    assert metadata_problems({**ckpt.metadata(), "class_names": [*names, "extra"]}, ckpt) == [
        "metadata class_names differs first at index 3: \"extra\", the checkpoint's absent (4 entries, the checkpoint's 3)"
    ]


def test_default_tolerances_are_the_documented_ones():
    """README's table: FP32 atol 1e-4 / rtol 1e-3 / 100%; FP16 atol 2e-2 (scaled) / rtol 5e-2 / 99%; INT8 99% / 1 point."""
    T = Tolerance
    assert DEFAULT_TOLERANCES == {
        "fp32": T(atol=1e-4, rtol=1e-3, min_top1_agreement=100.0),
        "fp16": T(atol=2e-2, rtol=5e-2, atol_scaled=True, min_top1_agreement=99.0),
        "int8": T(min_top1_agreement=99.0, max_acc_drop_pts=1.0),
    }


def _torchscript_with(trained_checkpoint, exported, dst, *, num_classes=None, meta_changes=None):
    """The checkpoint's model (or a fresh one with ``num_classes``) traced, with the export's metadata (changed)."""
    from mnv2export.checkpoint import load_checkpoint
    from mnv2export.config import ModelConfig
    from mnv2export.export.torchscript import export_torchscript
    from mnv2export.model import build_model
    from mnv2export.runtime import read_metadata

    model = load_checkpoint(trained_checkpoint).build_model()
    if num_classes is not None:
        model = build_model(ModelConfig(num_classes=num_classes, width_mult=0.35, dropout=0.0)).eval()
    meta = {**read_metadata(exported.out_dir / TORCHSCRIPT_FILE), **(meta_changes or {})}
    export_torchscript(model, torch.zeros(2, 3, 32, 32), meta, dst)


def test_wrong_input_size_and_class_count_are_failed_rows_not_crashes(exported, trained_checkpoint, tmp_path):
    folder = _folder(
        exported,
        tmp_path / "art",
        {"size.torchscript.pt": TORCHSCRIPT_FILE, "classes.torchscript.pt": TORCHSCRIPT_FILE},
    )
    _torchscript_with(
        trained_checkpoint, exported, folder / "size.torchscript.pt", meta_changes={"input_size": [3, 64, 64]}
    )
    _torchscript_with(trained_checkpoint, exported, folder / "classes.torchscript.pt", num_classes=5)
    _reseal(folder)
    report = check.check(trained_checkpoint, folder, samples=8)
    rows = {r.artifact: r for r in report.rows}
    size, classes = rows["size.torchscript.pt"], rows["classes.torchscript.pt"]
    assert size.status == "fail" and size.failures == [
        "metadata input_size is [3, 64, 64], the checkpoint's [3, 32, 32]"
    ], size
    # a program of another class count under metadata copied from an export: refused when it is loaded, as `info`
    # and `predict` refuse it (runtime.validate_artifact), before it is compared
    assert (
        classes.status == "error"
        and "the model_config in the file's metadata does not describe its weights" in classes.reason
    ), classes
    assert not report.passed


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)


# --------------------------------------------------------------------------------------------------- check.inputs
@pytest.fixture(scope="module")
def ckpt(trained_checkpoint):
    from mnv2export.checkpoint import load_checkpoint

    return load_checkpoint(trained_checkpoint)


def test_an_imagefolder_root_uses_its_val_split(ckpt, tmp_path):
    """Module docstring: 'a folder in ImageFolder layout (its ``val/`` split ...)'."""
    from mnv2export.check.inputs import load_real_images

    root = tmp_path / "folder"
    for c, name in enumerate(ckpt.class_names):
        for i in range(3):
            _png(root / "train" / name / f"{i}.png", 100 * c + i)
        _png(root / "val" / name / "0.png", 1000 + c)
    real = load_real_images(ckpt, str(root), samples=100)
    assert len(real) == len(ckpt.class_names) and real.labels is not None
    assert all(Path(k).parent.parent.name == "val" for k in real.keys)
    assert real.source == str(root / "val")


def test_labels_stay_with_their_images_when_some_are_unreadable(ckpt, tmp_path):
    """Unreadable images are skipped; the labels of the others must still be their own class folders'."""
    from mnv2export.check.inputs import load_real_images

    root = tmp_path / "labelled"
    for c, name in enumerate(ckpt.class_names):
        for i in range(2):
            _png(root / name / f"{i}.png", 10 * c + i)
    (root / ckpt.class_names[0] / "0broken.jpg").write_bytes(b"\xff\xd8 not really")
    real = load_real_images(ckpt, str(root), samples=100)
    assert len(real) == 2 * len(ckpt.class_names)
    assert real.labels is not None and len(real.labels) == len(real)
    assert [ckpt.class_names[label] for label in real.labels] == [Path(k).parent.name for k in real.keys]
    assert "1 unreadable skipped" in real.note


def test_images_are_drawn_without_repeats(ckpt, tmp_path):
    """'Up to ``samples`` readable images', drawn at random: each at most once."""
    from mnv2export.check.inputs import load_real_images

    root = tmp_path / "flat"
    for i in range(10):
        _png(root / f"{i}.png", i)
    everything = load_real_images(ckpt, str(root), samples=10)
    assert len(everything) == 10 and len(set(everything.keys)) == 10
    some = load_real_images(ckpt, str(root), samples=4)
    assert len(some) == 4 and len(set(some.keys)) == 4


# --------------------------------------------------------------------------------------------------- check.int8
def test_the_8bit_ideal_is_the_documented_one():
    from mnv2export.check.int8 import IDEAL_8BIT_SQNR_DB

    assert IDEAL_8BIT_SQNR_DB == pytest.approx(6.02 * 8 + 1.76)


def test_upstream_sqnr_is_the_lowest_of_the_nearest_compared_inputs():
    """'dB lost here: the lowest SQNR vs FP32 among the tensor's nearest compared inputs'; None when only the model
    input lies upstream; weightless nodes in between are walked through."""
    from onnx import helper

    from mnv2export.check.int8 import _upstream_sqnr

    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"]),
        helper.make_node("Conv", ["x", "wb"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["c"]),
        helper.make_node("Relu", ["c"], ["d"]),
        helper.make_node("Conv", ["d", "we"], ["e"]),
    ]
    graph = helper.make_graph(nodes, "g", [], [])
    up = _upstream_sqnr(graph, {"a": 40.0, "b": 30.0, "c": 25.0, "e": 20.0})
    assert up == {"a": None, "b": None, "c": 30.0, "e": 25.0}


def test_debug_int8_without_real_images_says_pass_data(tmp_path):
    from mnv2export.check.inputs import RealImages
    from mnv2export.check.int8 import debug_int8

    entries = {
        "model.int8.onnx": {"precision": "int8", "format": "onnx"},
        "model.onnx": {"precision": "fp32", "format": "onnx"},
    }
    res = debug_int8(tmp_path, entries, RealImages([], lambda k: None, None, "none", ""))
    assert res["layers"] == [] and "pass --data" in res["note"]


def test_debug_int8_ranks_layers_and_caps_the_samples(exported, ckpt):
    """Layers ranked by dB lost (worst first), weights by SQNR (worst first), at most ``samples`` images."""
    from mnv2export.check.inputs import load_real_images
    from mnv2export.check.int8 import debug_int8

    real = load_real_images(ckpt, None, 12)
    entries = {n: {"format": a["format"], "precision": a["precision"]} for n, a in exported.artifacts.items()}
    res = debug_int8(exported.out_dir, entries, real, samples=6, top=5)
    assert res["samples"] == 6 and len(res["layers"]) == 5 and res["tensors_compared"] > 5, res["note"]
    lost = [t["lost_db"] for t in res["layers"]]
    assert lost == sorted(lost, reverse=True)
    sqnr = [w["sqnr_db"] for w in res["weights"]]
    assert sqnr == sorted(sqnr)


# --------------------------------------------------------------------------------------------------- what may not pass a release gate
def test_the_file_not_the_manifest_decides_the_precision(exported, trained_checkpoint, tmp_path):
    """A perturbed FP32 model that the manifest calls INT8 would pass INT8's agreement bounds: it is judged as FP32
    (its own metadata), and the disagreement fails the row, naming both values."""
    folder = _folder(exported, tmp_path / "art", {ONNX_FILE: ONNX_FILE})
    _corrupt_weight(exported.out_dir / ONNX_FILE, folder / ONNX_FILE)
    _reseal(folder)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["artifacts"][ONNX_FILE]["precision"] = "int8"
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    report = check.check(trained_checkpoint, folder, samples=16)
    row = report.rows[0]
    assert row.status == "fail" and not report.passed
    assert row.precision == "fp32" and row.tolerance == report.tolerances["fp32"]
    assert row.failures[0] == "manifest.json says precision 'int8', the file's metadata 'fp32'"
    assert any("exceed both atol 0.0001" in f for f in row.failures[1:])


def test_a_file_changed_since_export_fails(exported, trained_checkpoint, tmp_path):
    """Still a working model, but not the file the manifest records: by sha256 (same size) or by size."""
    from mnv2export.fileio import sha256_file

    folder = _folder(exported, tmp_path / "art", {ONNX_FILE: ONNX_FILE, "sized.onnx": ONNX_FILE})
    model = onnx.load(str(folder / ONNX_FILE))
    model.producer_name = "x" * len(model.producer_name)  # same size, other bytes
    onnx.save(model, str(folder / ONNX_FILE))
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    recorded = manifest["artifacts"][ONNX_FILE]["sha256"]
    manifest["artifacts"]["sized.onnx"]["size_bytes"] += 1
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert (folder / ONNX_FILE).stat().st_size == manifest["artifacts"][ONNX_FILE]["size_bytes"]
    report = check.check(trained_checkpoint, folder, samples=4)
    rows = {r.artifact: r for r in report.rows}
    on_disk = sha256_file(folder / ONNX_FILE)
    assert rows[ONNX_FILE].status == "fail" and rows[ONNX_FILE].sha256 == on_disk
    assert rows[ONNX_FILE].failures == [
        f"changed since export: sha256 {recorded[:12]} in manifest.json, {on_disk[:12]} on disk"
    ]
    size = (folder / "sized.onnx").stat().st_size
    assert rows["sized.onnx"].failures == [
        f"changed since export: size_bytes {size + 1} in manifest.json, {size} on disk"
    ]
    assert not report.passed


def test_artifacts_of_another_checkpoint_fail(exported, trained_checkpoint, tmp_path):
    """A sibling checkpoint (here: the same weights, another epoch count in its summary, so another file) did not produce these artifacts: every row fails,
    naming both short hashes, even though they answer alike."""
    from dataclasses import replace

    from mnv2export.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(trained_checkpoint)
    sibling = save_checkpoint(
        replace(ckpt, train_summary={**ckpt.train_summary, "epoch": ckpt.train_summary["epoch"] + 1}),
        tmp_path / "run" / "best.pt",
    )
    other = load_checkpoint(sibling).sha256
    folder = _folder(exported, tmp_path / "art", {ONNX_FILE: ONNX_FILE, TORCHSCRIPT_FILE: TORCHSCRIPT_FILE})
    report = check.check(sibling, folder, samples=8)
    assert not report.passed and any("exported from another checkpoint" in n for n in report.notes)
    for row in report.rows:
        assert row.status == "fail" and row.failures == [
            f"exported from another checkpoint: source_checkpoint_sha256 {ckpt.sha256[:12]} in its metadata, {other[:12]} for best.pt"
        ], row
        assert row.metrics["max_abs"] < 1e-4  # it was compared all the same: the numbers alone would have passed
    assert check.check(trained_checkpoint, folder, samples=8).passed  # against its own checkpoint it passes


def test_artifacts_in_the_folder_but_not_in_the_manifest_fail(exported, trained_checkpoint, tmp_path, capsys):
    folder = _folder(exported, tmp_path / "art", {ONNX_FILE: ONNX_FILE})
    shutil.copy(exported.out_dir / INT8_FILE, folder / INT8_FILE)
    (folder / "old.torchscript.pt").write_bytes(b"corrupt")
    (folder / "check.json").write_text("{}")  # the check's own output, and other files, are not artifacts
    (folder / "README.txt").write_text("notes")
    shutil.copy(trained_checkpoint, folder / "best.pt")  # the reference kept beside its export: not an artifact
    out = tmp_path / "check.json"
    assert (
        main(["check", str(folder / "best.pt"), "--artifacts", str(folder), "--samples", "8", "--json", str(out)]) == 1
    )
    rows = {r["artifact"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {ONNX_FILE, INT8_FILE, "old.torchscript.pt"} and rows[ONNX_FILE]["status"] == "pass"
    for name in (INT8_FILE, "old.torchscript.pt"):
        assert rows[name]["status"] == "fail" and rows[name]["failures"] == [
            "in the folder but not in manifest.json: not checked; export again or remove it"
        ]
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.parametrize("atol, rtol", [(0.0, 1e-3), (1e-4, 0.0), (0.0, 0.0)])
def test_a_zero_atol_or_rtol_is_judged_not_a_crash(atol, rtol):
    """0 disables that bound's slack: a logit then fails past the other bound alone (past any difference when both are 0)."""
    ref = _logits(np.arange(8) % 4)
    for precision in ("fp32", "fp16"):
        tol = with_overrides(atol=atol, rtol=rtol)[precision]
        same = compare(ref, ref.copy(), n_real=8, labels=None, used=np.full(8, 7), tol=tol)
        assert judge(same, tol, precision) == [] and same["tol_ratio"] == 0.0
        out = ref.copy()
        out[2, 0] += 1e-2  # on a zero logit: fails any zero-slack bound
        out[5, 1] += (
            1e-6 if (atol or rtol) else 0.0
        )  # within the bound that is not 0 (relative 2e-7 of 5, or 1e-6 < 1e-4)
        m = compare(ref, out, n_real=8, labels=None, used=np.full(8, 7), tol=tol)
        failures = judge(m, tol, precision)
        assert m["elementwise_failures"] == 1 and m["worst"]["sample"] == 2, m
        assert len(failures) == 1 and failures[0].startswith(f"1 of 32 logits exceed both atol {atol:g}"), failures
        assert ("x atol" in failures[0]) is (atol > 0)


def test_zero_atol_on_the_command_line(exported, trained_checkpoint, tmp_path, capsys):
    folder = _folder(exported, tmp_path / "art", {ONNX_FILE: ONNX_FILE})
    out = tmp_path / "c.json"
    code = main(
        [
            "check",
            str(trained_checkpoint),
            "--artifacts",
            str(folder),
            "--samples",
            "8",
            "--atol",
            "0",
            "--rtol",
            "0",
            "--json",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 1 and "unexpected" not in captured.err, captured.err
    row = json.loads(out.read_text())["rows"][0]
    assert row["status"] == "fail" and row["failures"][0].split(" (")[0].endswith(
        "logits exceed both atol 0 and rtol 0"
    )


def test_a_nan_logit_is_named_as_such():
    ref = _logits(np.arange(8) % 4)
    out = ref.copy()
    out[6, 2] += 1.0
    out[3, 1] = np.nan
    tol = DEFAULT_TOLERANCES["fp32"]
    failures = judge(compare(ref, out, n_real=8, labels=None, used=np.full(8, 7), tol=tol), tol, "fp32")
    assert failures[0] == "1 logit is NaN or infinite"
    assert "the worst logit is nan (NaN/inf), the reference 0, on real sample 3, class 1" in failures[1], failures
    assert "nanx" not in failures[1] and "diff nan" not in failures[1]


def test_the_report_is_an_audit_trail(exported, trained_checkpoint, tmp_path):
    from datetime import datetime

    import onnxruntime

    import mnv2export
    from mnv2export.fileio import sha256_file

    folder = _folder(exported, tmp_path / "art", {ONNX_FILE: ONNX_FILE})
    d = check.check(trained_checkpoint, folder, samples=4).to_dict()
    assert datetime.fromisoformat(d["created"]).tzinfo is not None
    v = d["versions"]
    assert (
        v["mnv2export"] == mnv2export.__version__
        and v["torch"] == str(torch.__version__)
        and v["onnx"] == onnx.__version__
    )
    assert v["onnxruntime"] == onnxruntime.__version__ and v["python"].count(".") == 2
    assert d["checkpoint_sha256"] == sha256_file(trained_checkpoint)
    assert d["rows"][0]["sha256"] == sha256_file(folder / ONNX_FILE)


def test_json_into_a_folder_is_refused_before_the_check(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    for path, expect in (
        (tmp_path, "--json names a folder, not a file"),
        (tmp_path / "a_file" / "c.json", f"--json lies under {tmp_path / 'a_file'}, which is a file"),
    ):
        # the checkpoint does not exist: the output path is refused before anything else is read
        assert main(["check", str(tmp_path / "missing.pt"), "--json", str(path)]) == 1
        line = _one_error_line(capsys.readouterr().err)
        assert expect in line and str(path) in line, line


# --------------------------------------------------------------------------------------------------- hand-edited manifest
@pytest.mark.parametrize(
    "change, problem",
    [
        ({"source_checkpoint": "abc"}, "\"source_checkpoint\" is a string ('abc'), not an object"),
        ({"source_checkpoint": {"path": 5, "sha256": "x"}}, "source_checkpoint['path'] is a number (5), not a string"),
        (
            {"artifacts": {ONNX_FILE: {"sha256": 7}}},
            f"artifacts['{ONNX_FILE}']['sha256'] is a number (7), not a string",
        ),
        ({"artifacts": {"../../best.pt": {}}}, "artifact name '../../best.pt' is not a file name"),
        ([], "a list at the top, not an object"),
    ],
)
def test_a_hand_edited_manifest_is_one_line_exit_1(exported, trained_checkpoint, tmp_path, capsys, change, problem):
    """It used to be `unexpected AttributeError: 'str' object has no attribute 'get'`; the structure is checked by the
    same function as `mnv2 bench` uses (manifest.parse_manifest)."""
    folder = tmp_path / "edited"
    shutil.copytree(exported.out_dir, folder)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    (folder / MANIFEST_FILE).write_text(json.dumps({**manifest, **change} if isinstance(change, dict) else change))
    assert main(["check", str(trained_checkpoint), "--artifacts", str(folder), "--samples", "4"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: manifest.json is not a valid manifest ({problem}) ({folder / MANIFEST_FILE}): "), (
        line
    )
    assert "unexpected" not in line


def test_an_artifact_passed_as_the_checkpoint_is_named(exported, tmp_path, capsys):
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["check", str(exported.out_dir / TORCHSCRIPT_FILE), "--artifacts", str(exported.out_dir)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "file is a TorchScript artifact, not a checkpoint" in line, line
    assert exported.data["source_checkpoint"]["path"] in line
    assert not [w for w in seen if "torch.load" in str(w.message) or "TorchScript" in str(w.message)], [
        str(w.message) for w in seen
    ]
