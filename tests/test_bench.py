"""`mnv2 bench`: statistics on known timings, every format x provider runs or says why not, no silent CUDA fallback,
outputs written, a broken artifact does not stop the sweep. Tiny models, few calls; no assertion on speed."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mnv2export import bench
from mnv2export.bench.machine import HostPeak, physical_cores
from mnv2export.bench.placement import describe, node_placement, placement_from_profile
from mnv2export.bench.timing import Plan, measure
from mnv2export.errors import ConfigError, ProviderUnavailable
from mnv2export.formats import REGISTRY
from mnv2export.layout import FP16_FILE, INT8_FILE, ONNX_FILE

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where there is no GPU")
# one thread: on a 2-core machine shared with other jobs, two OpenMP threads of eager PyTorch stall at every barrier
FAST = {"warmup": 1, "iters": 3, "threads": 1}


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "mnv2export", "bench", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


# ----------------------------------------------------------------------------------------------------- statistics
def test_statistics_on_a_known_sequence():
    times = [float(i) for i in range(1, 101)]  # 1, 2, ..., 100 ms
    random.Random(0).shuffle(times)
    s = bench.latency_stats(times, batch=8)
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p90_ms"] == pytest.approx(90.1)  # rank 0.9 * 99 = 89.1 -> 90 + 0.1 * (91 - 90)
    assert s["p95_ms"] == pytest.approx(95.05)
    assert s["p99_ms"] == pytest.approx(99.01)
    assert (s["min_ms"], s["max_ms"], s["mean_ms"]) == (1.0, 100.0, 50.5)
    assert s["std_ms"] == pytest.approx(math.sqrt(sum((i - 50.5) ** 2 for i in range(1, 101)) / 99))  # sample std
    assert s["throughput"] == pytest.approx(8 * 1000 / 50.5)  # images per second over the loop


def test_statistics_match_numpy_and_edge_cases():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 1000):
        x = rng.lognormal(0, 1, n)
        s = bench.latency_stats(list(x))
        for q in (50, 90, 95, 99):
            assert s[f"p{q}_ms"] == pytest.approx(np.percentile(x, q))
        assert s["std_ms"] == pytest.approx(np.std(x, ddof=1) if n > 1 else 0.0)
        assert s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["p95_ms"] <= s["p99_ms"] <= s["max_ms"]
    assert bench.percentile([3.0], 99) == 3.0
    for bad in ([], [1.0, -1.0], [1.0, float("inf")]):
        with pytest.raises(ValueError):
            bench.latency_stats(bad)


def test_the_timed_loop_counts_first_call_warmup_and_iterations():
    calls, syncs = [], []
    first_s, times = measure(lambda: calls.append(1), lambda: syncs.append(1), Plan(warmup=4, iters=7))
    assert len(calls) == len(syncs) == 1 + 4 + 7 and len(times) == 7 and first_s >= 0
    calls.clear()
    _, times = measure(
        lambda: calls.append(1), None, Plan(warmup=0, duration=1e-6, min_iters=5)
    )  # duration: at least min_iters
    assert len(times) == 5 and len(calls) == 6
    calls.clear()
    _, times = measure(
        lambda: calls.append(1), None, Plan(warmup_s=1e-6, iters=2)
    )  # seconds of warm-up replace the count
    assert len(times) == 2 and len(calls) >= 3


def test_host_memory_is_the_rows_peak_rss():
    if HostPeak.method().startswith("ru_maxrss"):
        pytest.skip("the RSS high-water mark cannot be reset here")
    peak = HostPeak()
    peak.start()
    block = np.ones(64 * 2**20, np.uint8)  # 64 MiB, touched, then freed: the peak must still show it
    del block
    assert peak.added_mb() >= 60 and peak.peak_mb() >= peak.added_mb()
    peak.start()  # reset: the next stretch does not inherit the earlier peak
    assert peak.added_mb() < 60


def test_a_busy_machine_is_flagged_from_the_1_or_5_minute_load_and_says_which():
    from mnv2export.bench.machine import busy

    machine = {"logical_cpus": 2, "versions": {"torch": "t", "onnxruntime": "o"}}
    assert (
        busy({**machine, "load_average": [1.9, 1.5, 1.0]}) is None and busy({**machine, "load_average": None}) is None
    )
    assert (
        busy({**machine, "load_average": [4.4, 1.2, 0.8]}) == "1-minute load average 4.4 on 2 CPUs"
    )  # a burst the 5-minute figure hid
    assert busy({**machine, "load_average": [1.5, 2.5, 2.0]}) == "5-minute load average 2.5 on 2 CPUs"
    assert (
        busy({**machine, "load_average": [3.0, 2.5, 2.0]})
        == "1-minute load average 3 and 5-minute load average 2.5 on 2 CPUs"
    )
    line = bench.BenchResult(rows=[], machine={**machine, "load_average": [4.4, 1.2, 0.8]}).summary_line()
    assert "BUSY MACHINE: 1-minute load average 4.4 on 2 CPUs" in line


# ----------------------------------------------------------------------------------------------------- the sweep
@pytest.fixture(scope="module")
def sweep(exported):
    return bench.run(exported.out_dir, formats="all", providers="all", batches=(1, 2), include_copies=True, **FAST)


def test_every_format_and_provider_runs_or_says_why_not(sweep, exported):
    assert len(sweep.rows) == 5 * 2 * (1 + 2)  # formats x batches x (cpu + cuda resident / copies)
    for r in sweep.rows:
        assert r.status in ("ok", "unavailable"), (r.label, r.reason)
        if r.provider == "cpu" or torch.cuda.is_available():
            assert r.ok, (r.label, r.reason)
        if not r.ok:
            assert r.provider == "cuda" and "CUDA was asked for but" in r.reason and r.p50_ms is None
            continue
        assert r.iters == FAST["iters"] and 0 < r.min_ms <= r.p50_ms <= r.p99_ms <= r.max_ms
        assert r.throughput == pytest.approx(r.batch * 1000 / r.mean_ms)
        assert (
            r.session_s > 0 and r.first_s > 0 and r.peak_host_mb > 0 and r.host_added_mb is not None
        )  # measured (its value: test_host_memory_is_the_rows_peak_rss)
        assert r.speedup_vs_eager == pytest.approx(sweep.row("eager", r.provider, r.batch, r.io).p50_ms / r.p50_ms)
    cpu = [r for r in sweep.rows if r.provider == "cpu"]
    assert {r.format for r in cpu} == {
        f.name for f in REGISTRY if f.benched_when_absent
    } and all(  # no .pt2 or .pte here
        r.placement is None and r.gpu_mem_mb is None for r in cpu
    )
    assert sweep.row("eager", "cpu", 1).path == str(exported.data["source_checkpoint"]["path"])
    assert sweep.row("int8", "cpu", 2).path.endswith(INT8_FILE)


def test_cuda_graph_rows_sit_beside_the_onnx_formats_on_cuda_resident_only(exported):
    result = bench.run(
        exported.out_dir,
        formats="torchscript,onnx,int8",
        providers="all",
        batches=(1,),
        include_copies=True,
        cuda_graph=True,
        **FAST,
    )
    labels = [(r.format, r.provider, r.io) for r in result.rows]
    assert labels == [("torchscript", "cpu", "resident"), ("onnx", "cpu", "resident"), ("int8", "cpu", "resident")] + [
        (f, "cuda", io)
        for f in ("torchscript", "onnx", "onnx+graph", "int8", "int8+graph")
        for io in ("resident", "copies")
        if not (f.endswith("+graph") and io == "copies")
    ]
    assert "enable_cuda_graph=1" in result.settings["cuda_graph"]
    for r in result.rows:
        if r.provider == "cpu":
            assert r.ok, (r.label, r.reason)
        elif not torch.cuda.is_available():
            assert r.status == "unavailable" and "CUDA was asked for but" in r.reason, (r.label, r.reason)
    assert result.row("onnx+graph", "cuda").path == result.row("onnx", "cuda").path  # the same file, another session


def test_cuda_graphs_need_the_cuda_provider_and_an_onnx_format(exported):
    with pytest.raises(ConfigError, match="without the cuda provider"):
        bench.run(exported.out_dir, providers="cpu", cuda_graph=True, **FAST)
    with pytest.raises(ConfigError, match="ONNX formats only"):
        bench.run(exported.out_dir, formats="eager,torchscript", providers="all", cuda_graph=True, **FAST)
    r = cli(exported.out_dir, "--provider", "cpu", "--cuda-graph")
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.returncode == 1 and errors == [
        "error: CUDA graphs were asked for without the cuda provider: add --provider cuda (or all), "
        "or drop --cuda-graph"
    ], r.stderr


def test_machine_and_threads_are_stated(sweep, exported):
    m = sweep.machine
    assert (
        m["threads"] == 1
        and m["physical_cores"] == physical_cores()
        and m["cpu_model"]
        and "1 threads used" in sweep.summary_line()
    )
    assert {"torch", "onnxruntime", "mnv2export"} <= set(m["versions"]) and "gpu" in m
    assert "inference_mode" in sweep.settings["eager"] and sweep.settings["threads_source"] == "--threads"
    default = bench.run(exported.out_dir, formats="int8", batches=(1,), warmup=1, iters=3)  # threads not given
    assert default.machine["threads"] == physical_cores() and "physical cores" in default.settings["threads_source"]
    assert f"{physical_cores()} physical cores, {physical_cores()} threads used" in default.summary_line()


def test_amp_rows_beside_each_torch_format_say_what_autocast_reached(exported):
    result = bench.run(
        exported.out_dir, formats="eager,torchscript,onnx", providers="cpu", batches=(1,), amp=True, **FAST
    )
    assert [r.format for r in result.rows] == ["eager", "eager+amp", "torchscript", "torchscript+amp", "onnx"]
    for r in result.rows:
        assert r.ok, (r.label, r.reason)
    eager_amp, ts_amp = result.row("eager+amp"), result.row("torchscript+amp")
    assert eager_amp.path == result.row("eager").path and ts_amp.path == result.row("torchscript").path
    assert eager_amp.note == "torch.autocast bfloat16"  # eager's Linear runs in BF16 under CPU autocast
    assert ts_amp.note.startswith("torch.autocast bfloat16")  # reached, or says that this is an FP32 time
    assert eager_amp.speedup_vs_eager == pytest.approx(result.row("eager").p50_ms / eager_amp.p50_ms)
    assert "autocast" in result.settings["amp"]
    assert (
        bench.run(exported.out_dir, formats="onnx", batches=(1,), amp=True, **FAST).rows[0].format == "onnx"
    )  # ONNX: no twin


def test_amp_note_tells_an_fp32_time_from_an_autocast_one():
    from mnv2export.bench.targets import amp_note

    assert amp_note(torch.float16, torch.zeros(1, dtype=torch.float16)) == "torch.autocast float16"
    assert (
        amp_note(torch.float16, torch.zeros(1)) == "torch.autocast float16 not applied (logits float32): an FP32 time"
    )


def test_json_csv_markdown_and_plot(sweep, tmp_path):
    data = json.loads(sweep.to_json(tmp_path / "b.json").read_text())
    assert len(data["rows"]) == len(sweep.rows) and data["machine"]["threads"] == sweep.machine["threads"]
    assert data["rows"][0]["p50_ms"] == sweep.rows[0].p50_ms
    assert bench.BenchResult.from_dict(data).to_markdown() == sweep.to_markdown()
    sweep.to_csv(tmp_path / "b.csv")
    with open(tmp_path / "b.csv", newline="") as fh:
        lines = list(csv.DictReader(fh))
    assert len(lines) == len(sweep.rows) and {"p50_ms", "speedup_vs_eager", "cpu_model", "onnxruntime"} <= set(lines[0])
    assert float(lines[0]["p50_ms"]) == pytest.approx(sweep.rows[0].p50_ms)
    md = sweep.to_markdown()
    assert (
        sum(line.startswith("| ") for line in md.splitlines()) == 1 + len(sweep.rows)
        and "vs eager" in md
        and "threads used" in md
    )
    png = sweep.plot(tmp_path / "b.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_broken_artifact_does_not_stop_the_others(exported, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(exported.out_dir, folder)
    data = (folder / INT8_FILE).read_bytes()
    (folder / INT8_FILE).write_bytes(data[: len(data) // 2])  # truncated
    (folder / FP16_FILE).unlink()  # listed in the manifest, gone
    result = bench.run(folder, formats="all", providers="cpu", batches=(1,), rounds=2, **FAST)
    status = {r.format: r for r in result.rows}
    assert status["int8"].status == "error" and INT8_FILE in status["int8"].reason
    assert status["fp16"].status == "unavailable" and FP16_FILE in status["fp16"].reason
    for fmt in ("eager", "torchscript", "onnx"):
        assert status[fmt].ok and status[fmt].iters == 2 * FAST["iters"]  # two rounds pooled


def test_only_the_files_the_manifest_lists_are_timed_and_each_must_be_unchanged(exported, tmp_path):
    """A file of a fixed name that the manifest does not list (left by an earlier export) is not timed; a listed file
    that differs from its manifest entry (here: replaced by another valid model) is an error row, not timed."""
    folder = tmp_path / "stale"
    shutil.copytree(exported.out_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["artifacts"][INT8_FILE]  # what a later export without --quantize wrote beside the old INT8 file
    (folder / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(folder / FP16_FILE, folder / ONNX_FILE)  # loads and runs fine, but it is not the exported FP32 model
    result = bench.run(folder, formats="onnx,int8,fp16", providers="cpu", batches=(1,), **FAST)
    onnx, int8, fp16 = result.rows
    assert int8.status == "unavailable" and "not listed" in int8.reason and int8.p50_ms is None
    assert (
        onnx.status == "error"
        and "changed since export" in onnx.reason
        and ONNX_FILE in onnx.reason
        and onnx.p50_ms is None
    )
    assert fp16.ok


def test_checkpoint_target_finds_its_export(exported, trained_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    alone = bench.run(trained_checkpoint, formats="eager,onnx", batches=(1,), **FAST)
    assert (
        alone.row("eager").ok
        and alone.row("onnx").status == "unavailable"
        and "mnv2 export" in alone.row("onnx").reason
    )
    shutil.copytree(
        exported.out_dir, tmp_path / "export" / trained_checkpoint.parent.name
    )  # mnv2 export's default folder
    found = bench.run(trained_checkpoint, formats="eager,onnx", batches=(1,), **FAST)
    assert found.row("onnx").ok and found.row("onnx").path.endswith(ONNX_FILE)


def test_bad_settings_are_config_errors(exported):
    for kwargs in (
        {"iters": 3, "duration": 1.0},
        {"batches": (0,)},
        {"formats": "onnx,tflite"},
        {"providers": "tpu"},
        {"threads": 0},
        {"warmup": -1},
        {"rounds": 0},
    ):
        with pytest.raises(ConfigError):
            bench.run(exported.out_dir, **kwargs)
    with pytest.raises(ConfigError, match="single onnx artifact"):
        bench.run(exported.out_dir / ONNX_FILE)


def test_a_file_that_is_no_model_is_one_error_saying_what_it_is_not(trained_checkpoint, tmp_path):
    """Any binary that is not a zip used to be taken for ONNX ("some.jpg is a single onnx artifact")."""
    from PIL import Image

    from mnv2export.errors import ArtifactError
    from mnv2export.filekind import detect_format

    Image.new("RGB", (8, 8)).save(tmp_path / "some.jpg")
    (tmp_path / "truncated.pt").write_bytes(trained_checkpoint.read_bytes()[:5000])
    (tmp_path / "noise.bin").write_bytes(
        b"\x08\x07" + bytes(range(256)) * 20
    )  # starts like an ONNX file, parses as none
    (tmp_path / "tiny.bin").write_bytes(b"\x08\x07")  # a valid protobuf message (ir_version 7), but no model: no graph
    for name, match in (
        ("some.jpg", "not an ONNX model, a TorchScript file or a checkpoint (it looks like a JPEG image)"),
        ("truncated.pt", "damaged zip archive (truncated?), not a readable checkpoint or TorchScript file"),
        ("noise.bin", "not an ONNX model, a TorchScript file or a checkpoint"),
        ("tiny.bin", "not an ONNX model, a TorchScript file or a checkpoint"),
    ):
        with pytest.raises(ArtifactError) as info:
            bench.run(tmp_path / name, **FAST)
        assert match in info.value.what and "artifacts folder" in info.value.hint, (name, info.value.one_line())
        with pytest.raises(ArtifactError, match="not"):
            detect_format(tmp_path / name)


def test_a_checkpoint_target_is_validated_before_anything_is_timed(trained_checkpoint, tmp_path, monkeypatch):
    """A bare state dict or a pickled object used to give a whole table of error rows, then the error."""
    import argparse

    import mnv2export.bench.sweep as sweep_module
    from mnv2export.errors import CheckpointError

    payload = torch.load(trained_checkpoint, weights_only=True)
    torch.save(payload["state_dict"], tmp_path / "bare.pt")
    torch.save(
        {**payload, "train_summary": {"args": argparse.Namespace(lr=0.1)}}, tmp_path / "pickled.pt"
    )  # as old recipes saved
    monkeypatch.setattr(sweep_module, "_measure_row", lambda *a, **k: pytest.fail("a row was timed"))
    with pytest.raises(CheckpointError, match="bare state dict"):
        bench.run(tmp_path / "bare.pt", formats="eager", batches=(1,), **FAST)
    with pytest.raises(CheckpointError, match="pickled Python object"):
        bench.run(tmp_path / "pickled.pt", formats="eager", batches=(1,), **FAST)
    r = cli(
        tmp_path / "bare.pt",
        "--formats",
        "eager",
        "--provider",
        "cpu",
        "--batch",
        "1",
        "--iters",
        "2",
        "--threads",
        "1",
    )
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: file is a bare state dict"), r.stderr
    assert "vs eager" not in r.stdout and "eager/cpu" not in r.stderr  # no table, no row's log line


def test_a_manifest_entry_without_its_size_and_hash_is_not_timed(exported, tmp_path):
    """As `mnv2 check` fails such an entry: nothing says the file is the one that was exported."""
    folder = tmp_path / "unsealed"
    shutil.copytree(exported.out_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["artifacts"][ONNX_FILE] = {}
    del manifest["artifacts"][FP16_FILE]["sha256"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = bench.run(folder, formats="onnx,int8,fp16", providers="cpu", batches=(1,), **FAST)
    onnx, int8, fp16 = result.rows
    assert (
        onnx.status == "error"
        and onnx.reason
        == f"{ONNX_FILE} changed since export: size_bytes None in manifest.json, "
        f"{(folder / ONNX_FILE).stat().st_size} on disk; export again"
        and onnx.p50_ms is None
    )
    assert fp16.status == "error" and "sha256 None in manifest.json" in fp16.reason and fp16.p50_ms is None
    assert int8.ok


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"source_checkpoint": "abc"}, "\"source_checkpoint\" is a string ('abc'), not an object"),
        ({"source_checkpoint": {"path": 5}}, "source_checkpoint['path'] is a number (5), not a string"),
        (
            {"source_checkpoint": {"path": "/x/best.pt", "sha256": ["a"]}},
            "source_checkpoint['sha256'] is a list, not a string",
        ),
        ({"artifacts": [ONNX_FILE]}, '"artifacts" is a list, not an object'),
        ({"artifacts": {ONNX_FILE: "model"}}, f"artifacts['{ONNX_FILE}'] is a string ('model'), not an object"),
        (
            {"artifacts": {ONNX_FILE: {"size_bytes": "12"}}},
            f"artifacts['{ONNX_FILE}']['size_bytes'] is a string ('12'), not a whole number",
        ),
        ({"artifacts": {"../model.onnx": {}}}, "artifact name '../model.onnx' is not a file name"),
    ],
)
def test_a_hand_edited_manifest_is_one_error_not_a_crash(exported, tmp_path, change, problem):
    from mnv2export.errors import ArtifactError

    folder = tmp_path / "edited"
    shutil.copytree(exported.out_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, **change}))
    with pytest.raises(ArtifactError) as info:
        bench.run(folder, formats="eager,onnx", batches=(1,), **FAST)
    assert info.value.what == f"manifest.json is not a valid manifest ({problem})", info.value.what


def test_eager_needs_the_source_checkpoints_recorded_hash(exported, tmp_path):
    folder = tmp_path / "nohash"
    shutil.copytree(exported.out_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["source_checkpoint"]["sha256"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    row = bench.run(folder, formats="eager", batches=(1,), **FAST).rows[0]
    assert row.status == "unavailable" and "records no SHA-256" in row.reason, row.reason


def test_endless_or_overflowing_seconds_are_refused_before_any_work():
    """--warmup inf would warm up forever; --duration inf / 1e300 overflowed in every row: all refused up front."""
    from mnv2export.bench.sweep import check_settings

    for warmup_s, duration in ((math.inf, None), (math.nan, None), (None, math.inf), (None, 1e300), (None, math.nan)):
        with pytest.raises(ConfigError, match="out of range"):
            check_settings("onnx", (1,), 0, warmup_s, None, duration)
    assert check_settings("onnx", (1,), 0, 2.0, None, 3600.0)[2].duration == 3600.0
    for warmup, iters in ((10**12, None), (0, 10**12)):  # counts too: a typo of zeros, never a benchmark
        with pytest.raises(ConfigError, match="out of range"):
            check_settings("onnx", (1,), warmup, None, iters, None)
    assert check_settings("onnx", (1,), 10_000_000, None, 10_000_000, None)[2].iters == 10_000_000


def test_cli_refuses_endless_seconds_and_never_says_others_were_measured_when_none_was(exported, tmp_path):
    for args in (("--warmup", "infs"), ("--duration", "inf"), ("--duration", "1e300")):
        r = cli(exported.out_dir, "--formats", "onnx", "--provider", "cpu", "--batch", "1", *args)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert (
            r.returncode == 1 and len(lines) == 1 and "out of range" in lines[0] and "row(s) failed" not in r.stdout
        ), (args, r.stderr)
    folder = tmp_path / "changed"
    shutil.copytree(exported.out_dir, folder)
    shutil.copy(folder / FP16_FILE, folder / ONNX_FILE)  # the only row asked for fails
    r = cli(folder, "--formats", "onnx", "--provider", "cpu", "--batch", "1", "--iters", "2", "--threads", "1")
    assert (
        r.returncode == 1 and "no row could be measured" in r.stderr and "the others were measured" not in r.stdout
    ), r.stdout


# ----------------------------------------------------------------------------------------------------- providers
@no_cuda
def test_explicit_cuda_without_a_gpu_is_an_error(exported):
    with pytest.raises(ProviderUnavailable, match="CUDA was asked for but"):
        bench.run(exported.out_dir, providers="cuda", **FAST)
    with pytest.raises(ProviderUnavailable):
        bench.run(exported.out_dir, formats="onnx", providers="cpu,cuda", **FAST)
    r = cli(exported.out_dir, "--provider", "cuda", "--iters", "2")
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: CUDA was asked for but"), r.stderr


def test_tensorrt_rows_are_onnx_only(exported):
    result = bench.run(exported.out_dir, formats="eager,torchscript", providers="tensorrt", batches=(1,), **FAST)
    assert all(r.status == "unavailable" and "ONNX models only" in r.reason for r in result.rows)
    if not torch.cuda.is_available():  # an explicit TensorRT request for ONNX rows where there is no GPU: exit 1
        with pytest.raises(ProviderUnavailable, match="TENSORRT was asked for but|CUDA was asked for but"):
            bench.run(exported.out_dir, formats="onnx", providers="tensorrt", **FAST)


def test_node_placement_from_onnx_runtimes_profiler(exported):
    p = node_placement(exported.out_dir / INT8_FILE, "cpu", threads=1)
    assert p["total"] > 0 and p["nodes"] == {"cpu": p["total"]} and p["memcpy"] == 0
    assert any(op.startswith("QLinear") or op == "QuantizeLinear" for op in p["ops"]["cpu"])
    assert describe(p, "cpu") == f"{p['total']}/{p['total']} nodes on cpu"
    # what the CUDA provider's profile of a QDQ model looks like: some nodes on the CPU, memcpy between
    events = [
        {"cat": "Node", "name": f"{n}_kernel_time", "args": {"provider": prov, "op_name": op}}
        for n, prov, op in (
            ("q0", "CPUExecutionProvider", "QuantizeLinear"),
            ("conv", "CUDAExecutionProvider", "Conv"),
            ("copy", "CUDAExecutionProvider", "MemcpyToHost"),
            ("conv", "CUDAExecutionProvider", "Conv"),
            ("fc", "CUDAExecutionProvider", "Gemm"),
        )
    ]
    events.append({"cat": "Session", "name": "model_run", "args": {}})
    mixed = placement_from_profile(events)
    assert mixed == {
        "nodes": {"cpu": 1, "cuda": 3},
        "ops": {"cpu": {"QuantizeLinear": 1}, "cuda": {"Conv": 1, "MemcpyToHost": 1, "Gemm": 1}},
        "memcpy": 1,
        "total": 4,
    }
    assert describe(mixed, "cuda") == "partly off cuda: 1 of 4 nodes on cpu (QuantizeLinear x1), 1 memcpy nodes"


# ----------------------------------------------------------------------------------------------------- the command
def test_cli_table_and_outputs(exported, tmp_path):
    r = cli(
        exported.out_dir,
        "--formats",
        "eager,onnx,int8",
        "--provider",
        "cpu",
        "--batch",
        "1",
        "--warmup",
        "0.01s",
        "--iters",
        "3",
        "--threads",
        "1",
        "--json",
        tmp_path / "b.json",
        "--csv",
        tmp_path / "b.csv",
        "--plot",
        tmp_path / "b.png",
    )
    assert r.returncode == 0, r.stderr
    assert "vs eager" in r.stdout and "int8" in r.stdout and "1.00x" in r.stdout and "1 threads used" in r.stdout
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [x["format"] for x in rows] == ["eager", "onnx", "int8"] and all(x["status"] == "ok" for x in rows)
    assert (tmp_path / "b.csv").is_file() and (tmp_path / "b.png").is_file()


def test_cli_usage_errors(exported):
    r = cli(exported.out_dir, "--iters", "3", "--duration", "1")
    assert r.returncode == 1 and "exclude each other" in r.stderr
    r = cli(exported.out_dir, "--batch", "one")
    assert r.returncode == 2 and "--batch" in r.stderr
    r = cli(exported.out_dir, "--warmup", "soon")
    assert r.returncode == 2 and "--warmup" in r.stderr
    for option, value in (
        ("--batch", "1,,2"),
        ("--provider", "cpu,"),
        ("--formats", "onnx,"),
    ):  # every list alike: exit 2
        r = cli(exported.out_dir, option, value)
        assert (
            r.returncode == 2
            and option in r.stderr
            and "empty item" in r.stderr
            and len(r.stderr.strip().splitlines()) == 1
        ), (option, r.stderr)


def test_output_paths_are_checked_before_any_work_and_a_late_write_failure_is_one_line(exported, tmp_path):
    from mnv2export.errors import OutputError

    for args, message in (
        (("--json", tmp_path), "--json names a folder"),
        (("--csv", "/proc/x.csv"), "--csv cannot be written"),
        (("--plot", tmp_path), "--plot names a folder"),
    ):
        r = cli(exported.out_dir, "--formats", "onnx", "--provider", "cpu", "--batch", "1", "--iters", "2", *args)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 1 and len(lines) == 1 and message in lines[0] and "unexpected" not in r.stderr, (
            args,
            r.stderr,
        )
        assert "vs eager" not in r.stdout  # refused before the sweep, not after it
    result = bench.BenchResult(rows=[bench.BenchRow("onnx", "cpu", 1)], machine={})
    for path in (tmp_path, "/proc/x.json"):  # what a folder appearing, or a file system refusing, at the end looks like
        with pytest.raises(OutputError, match="cannot write output file") as err:
            result.to_json(path)
        assert str(path) in str(err.value)
        with pytest.raises(OutputError):
            result.to_csv(path)


def test_strict_makes_a_failed_row_fatal_but_not_an_unavailable_one(exported, tmp_path):
    folder = tmp_path / "changed"
    shutil.copytree(exported.out_dir, folder)
    shutil.copy(folder / FP16_FILE, folder / ONNX_FILE)  # the onnx row fails, eager is measured
    args = (folder, "--formats", "eager,onnx", "--provider", "cpu", "--batch", "1", "--iters", "2", "--threads", "1")
    assert cli(*args).returncode == 0  # documented: without --strict only "no row measured" is fatal
    r = cli(*args, "--strict")
    lines = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert (
        r.returncode == 1
        and len(lines) == 1
        and "1 row(s) failed (onnx/cpu batch 1: " in lines[0]
        and "changed since export" in lines[0]
    )
    r = cli(
        exported.out_dir,
        "--formats",
        "int8",
        "--provider",
        "all",
        "--batch",
        "1",
        "--iters",
        "2",
        "--threads",
        "1",
        "--strict",
    )
    assert r.returncode == 0, r.stderr  # cuda rows unavailable where there is no GPU: not failures


# ----------------------------------------------------------------------------------------------------- GPU only
@pytest.mark.cuda
def test_cuda_rows_time_on_the_gpu_and_report_placement(exported):
    result = bench.run(
        exported.out_dir, formats="all", providers="cuda", batches=(1, 4), include_copies=True, amp=True, **FAST
    )
    for r in result.rows:
        assert r.ok, (r.label, r.reason)
        assert r.gpu_mem_mb is not None and r.gpu_mem_mb > 0
        if r.format in ("onnx", "int8", "fp16"):
            assert r.placement and r.placement["total"] > 0 and r.note
        if r.format.endswith("+amp"):
            assert r.note.startswith("torch.autocast float16"), r.note
    assert result.row("eager+amp", "cuda", 4).note == "torch.autocast float16"
    assert result.machine["gpu"]["name"]


@pytest.mark.cuda
def test_cuda_graph_rows_replay_what_the_model_computes(exported):
    """A CUDA-graph row is timed, says so, and its replayed output is the model's (against the CPU session); INT8,
    whose weight DequantizeLinear nodes ONNX Runtime keeps on the CPU, is refused by ONNX Runtime and said to be."""
    from mnv2export.bench.targets import bind, input_batch, load
    from mnv2export.check import tf32_disabled

    result = bench.run(
        exported.out_dir, formats="onnx,int8,fp16", providers="cuda", batches=(1, 4), cuda_graph=True, **FAST
    )
    for fmt in ("onnx+graph", "fp16+graph"):
        for b in (1, 4):
            row = result.row(fmt, "cuda", b)
            assert row.ok and row.p50_ms > 0 and row.note.startswith("CUDA graph (enable_cuda_graph=1)"), (
                row.label,
                row.reason,
                row.note,
            )
    int8 = result.row("int8+graph", "cuda", 1)
    assert int8.ok or (int8.status == "unavailable" and "CUDA graph" in int8.reason), (int8.status, int8.reason)
    with tf32_disabled():
        runner = load(exported.out_dir / ONNX_FILE, "cuda", 1, cuda_graph=True)
        x = input_batch(runner, 4)
        bound = bind(runner, x, "resident")
        for _ in range(3):  # the capture, then replays
            bound.call()
        bound.sync()
        got = bound.keep[1].numpy()
    want = load(exported.out_dir / ONNX_FILE, "cpu", 1).run(x)
    assert np.abs(got - want).max() <= 1e-3 * max(1.0, float(np.abs(want).max()))


# --------------------------------------------------------------------------------------------------- bench
def test_the_synchronisation_is_inside_the_timer():
    """On a GPU the sync follows each call inside the timer, so an asynchronous launch cannot look fast."""
    from mnv2export.bench.timing import Plan, measure

    def sync():
        time.sleep(0.003)

    for plan in (Plan(warmup=0, iters=3), Plan(warmup=0, duration=1e-6, min_iters=3)):
        _, times = measure(lambda: None, sync, plan)
        assert min(times) >= 2.5, plan


def test_an_unexpected_exception_becomes_the_rows_error(exported, monkeypatch):
    """Any failure of one row (not only the package's own errors) is carried by that row; the sweep goes on."""
    import mnv2export.bench.targets as targets
    from mnv2export import bench

    real, calls = targets.bind, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("device lost\ndetails")
        return real(*a, **k)

    monkeypatch.setattr(targets, "bind", flaky)
    result = bench.run(
        exported.out_dir, formats="onnx,int8", providers="cpu", batches=(1,), warmup=1, iters=3, threads=1
    )
    first, second = result.rows
    assert first.status == "error" and first.reason == "RuntimeError: device lost" and first.p50_ms is None
    assert second.ok and second.iters == 3


def test_the_table_gives_each_row_that_did_not_run_its_full_reason_on_one_line_below(capsys):
    """A reason folded into the table's narrow note column ran to 8 lines of 17 characters; the note now points to
    the reason, said whole under the table (one line per provider and reason, the batches it covers)."""
    from mnv2export.bench.result import BenchRow
    from mnv2export.cli.bench_cmd import _print

    why_cuda = "CUDA was asked for but no NVIDIA GPU driver was found on this machine (no /dev/nvidia*, or libcuda.so.1 missing)"
    rows = [BenchRow("onnx", "cuda", b, status="unavailable", reason=why_cuda) for b in (1, 32)]
    rows.append(BenchRow("int8", "cpu", 1, status="error", reason="model.int8.onnx changed since export [sha256]"))

    class Result:
        def __init__(self):
            self.rows = rows

        def summary_line(self):
            return "machine line"

    _print(Result())
    out = capsys.readouterr().out.splitlines()
    assert sum("unavailable [1]" in line for line in out) == 1 and sum("error [2]" in line for line in out) == 1, out
    below = out[out.index(next(x for x in out if x.startswith("└"))) + 1 :]
    assert below[:2] == [
        f"[1] unavailable: onnx on cuda, batch 1, 32: {why_cuda}",
        "[2] error: int8 on cpu, batch 1: model.int8.onnx changed since export [sha256]",
    ], below


# ----------------------------------------------------------------------------------------------------- memory
def test_the_per_image_footprint_comes_from_the_models_own_shapes(exported):
    """Tiny model (32 px, width 0.35): the peak is inside features.2's expansion, at 16 x 16: the model's input (held
    by its forward's frame), the block's 8-channel input (held by the Sequentials around it), the 48-channel
    convolution output and the BatchNorm output made from it."""
    from mnv2export.bench.memory import footprint
    from mnv2export.runtime import read_metadata

    fp = footprint(read_metadata(exported.out_dir / ONNX_FILE))
    assert fp.input_bytes == 4 * 3 * 32 * 32 and fp.output_bytes == 4 * 4
    assert fp.activation_bytes == 4 * (3 * 32 * 32 + 8 * 16 * 16 + 2 * 48 * 16 * 16)
    assert fp.layer_bytes == 4 * 2 * 48 * 16 * 16


def test_the_memory_estimate_covers_what_each_format_really_takes(exported):
    """For every format, the estimate of a row is at least the peak RSS growth that loading, binding and calling it
    really cost (at a batch where activations, not libraries, dominate), and not a vacuous bound."""
    from mnv2export.bench.memory import estimate_bytes, footprint
    from mnv2export.bench.targets import bind, input_batch, load
    from mnv2export.device import cpu_threads
    from mnv2export.runtime import read_metadata

    if HostPeak.method().startswith("ru_maxrss"):
        pytest.skip("the RSS high-water mark cannot be reset here")
    batch = 1024
    fp = footprint(read_metadata(exported.out_dir / ONNX_FILE))
    files = {
        "eager": exported.data["source_checkpoint"]["path"],
        **{
            f: exported.out_dir / name
            for f, name in (
                ("torchscript", "model.torchscript.pt"),
                ("onnx", ONNX_FILE),
                ("int8", INT8_FILE),
                ("fp16", FP16_FILE),
            )
        },
    }
    grew = {}
    for fmt, path in files.items():
        peak = HostPeak()
        peak.start()
        with cpu_threads(1):  # as the sweep loads a row: torch's thread count is process-wide, so put it back after
            runner = load(Path(path), "cpu", 1)
            bound = bind(runner, input_batch(runner, batch), "resident")
            with bound.context():
                bound.call()
                bound.call()
        grew[fmt] = peak.added_mb() * 2**20
        del runner, bound
        estimate = estimate_bytes(fp, fmt, batch, threads=1, weights=Path(path).stat().st_size)
        assert estimate >= grew[fmt], (fmt, estimate / 1e6, grew[fmt] / 1e6)
    assert max(grew.values()) >= batch * fp.activation_bytes / 2  # the activations were really there, at this batch
    assert estimate_bytes(fp, "eager", batch, threads=1) <= 6 * grew["eager"]


def test_a_row_that_cannot_fit_is_refused_with_its_estimate(exported):
    """A batch whose estimate exceeds the memory left is an error row saying both figures and the largest batch
    that fits, before its model is loaded or its input allocated; the other batch sizes are measured."""
    from mnv2export.bench.memory import estimate_bytes, fit_problem, footprint, per_image_bytes
    from mnv2export.runtime import read_metadata

    fp = footprint(read_metadata(exported.out_dir / ONNX_FILE))
    need = estimate_bytes(fp, "onnx", 1000, threads=2, weights=10**6)
    per = per_image_bytes(fp, "onnx")
    assert fit_problem(need, need, "x", batch=1000, per_image=per, where="host") is None
    assert fit_problem(need, None, "unknown", batch=1000, per_image=per, where="host") is None
    what, hint = fit_problem(need, need - 1, "MemAvailable", batch=1000, per_image=per, where="host")
    assert what.startswith(f"batch 1000 needs about {need / 1e6:.0f} MB of host memory") and "MemAvailable" in what
    assert hint == "use a batch of at most 999"
    room = estimate_bytes(fp, "onnx", 200, threads=2, weights=10**6) + per - 1  # 200 fit, 201 do not
    assert (
        fit_problem(need, room, "MemAvailable", batch=1000, per_image=per, where="host")[1]
        == "use a batch of at most 200"
    )
    assert fit_problem(need, 10, "MemAvailable", batch=1000, per_image=per, where="host")[1].startswith(
        "not even one image fits"
    )

    started = time.perf_counter()
    result = bench.run(exported.out_dir, formats="eager,onnx", providers="cpu", batches=(1, 10**7), **FAST)
    assert time.perf_counter() - started < 60
    for fmt in ("eager", "onnx"):
        assert result.row(fmt, "cpu", 1).ok
        huge = result.row(fmt, "cpu", 10**7)
        assert huge.status == "error" and huge.session_s is None and huge.peak_host_mb is None, huge.reason
        assert huge.reason.startswith("batch 10000000 needs about ") and " GB of host memory" in huge.reason, (
            huge.reason
        )
        assert "available (" in huge.reason and ": use a batch of at most " in huge.reason, huge.reason


def test_cli_a_batch_that_cannot_fit_exits_1_saying_the_estimate(exported):
    r = cli(
        exported.out_dir,
        "--formats",
        "onnx",
        "--provider",
        "cpu",
        "--batch",
        "10000000",
        "--iters",
        "2",
        "--threads",
        "1",
    )
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.returncode == 1 and len(errors) == 1, r.stderr
    assert errors[0].startswith(
        "error: no row could be measured (onnx/cpu batch 10000000: batch 10000000 needs about "
    ), errors
    assert "of host memory" in errors[0] and "available (" in errors[0], errors


@pytest.mark.cuda
def test_a_batch_too_large_for_the_gpu_is_refused_with_the_free_device_memory(exported):
    result = bench.run(exported.out_dir, formats="onnx,eager", providers="cuda", batches=(10**6,), **FAST)
    for r in result.rows:  # 12 GB of input fits the host; about 250 GB does not fit any GPU
        assert r.status == "error" and "of GPU memory" in r.reason and "free GPU memory (cudaMemGetInfo)" in r.reason, (
            r.reason
        )


# ----------------------------------------------------------------------------------------------------- the plot
def test_the_latency_plots_log_axis_reads_plain_numbers():
    """Minor ticks of a log axis were labelled `6 x 10^0`; every label now is a plain number."""
    import re

    from mnv2export.bench.plot import latency_figure, plain_number

    rows = [
        bench.BenchRow(fmt, "cpu", b, p50_ms=ms * b, p90_ms=ms * b * 1.1)
        for fmt, ms in (("eager", 9.1), ("onnx", 4.2), ("int8", 2.5))
        for b in (1, 32)
    ]
    rows.append(
        bench.BenchRow("fp16", "cpu", 1, p50_ms=0.031, p90_ms=0.04)
    )  # batch 1 spans three decades, batch 32 one
    fig = latency_figure(bench.BenchResult(rows=rows, machine={"cpu_model": "cpu", "threads": 1}))
    fig.canvas.draw()
    shown = []
    for ax in fig.axes:
        lo, hi = ax.get_ylim()
        ticks = [t for minor in (False, True) for t in ax.get_yticklabels(minor=minor)]
        shown.append([t.get_text() for t in ticks if lo <= t.get_position()[1] <= hi and t.get_text()])
    assert shown[0] == ["0.1", "1", "10"], shown  # three decades: the powers of ten only
    assert shown[1] == ["100", "30", "40", "60", "200", "300"], (
        shown
    )  # about a decade: 2, 3, 4 and 6 times a power of ten too
    for text in shown[0] + shown[1]:
        assert re.fullmatch(r"\d+(\.\d+)?", text), text
    assert [plain_number(x) for x in (6.0, 0.30000000000000004, 1e-05, 1000.0, 2e4)] == [
        "6",
        "0.3",
        "0.00001",
        "1000",
        "20000",
    ]
