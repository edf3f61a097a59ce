"""A runtime-only install (``pip install -e .``, no torch): predict, info and bench of ONNX files run, and say the
same as with torch; a command that needs torch says so in one line.

One subprocess, because this process has imported torch already: it blocks torch and torchvision
(``sys.modules[name] = None`` makes every import of them fail, as on an install without them), then calls the CLI
for each command and reports what it got as JSON. .ci/run does the same in a venv that holds no torch at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from mnv2export.fileio import json_text
from mnv2export.info import describe
from mnv2export.predict import predict

ONNX_FILES = ("model.onnx", "model.int8.onnx", "model.fp16.onnx")

CHILD = r"""
import contextlib, io, json, sys
from pathlib import Path

sys.modules["torch"] = sys.modules["torchvision"] = None  # an install without them
out_dir, images, work = (Path(a) for a in sys.argv[1:4])

import mnv2export.imaging  # noqa: F401 - the numpy preprocessing imports no torch
from mnv2export.cli import main

def cli(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return {"rc": rc, "out": out.getvalue(), "err": err.getvalue()}

said = {"predict": {}}
for name in %(files)r:
    said["predict"][name] = cli("predict", images, "--model", out_dir / name, "--json", "-", "--top-k", "4")
said["info"] = cli("info", out_dir / "model.onnx", "--json", work / "info.json")
said["bench_onnx"] = cli(
    "bench", out_dir, "--formats", "onnx,int8,fp16", "--provider", "cpu", "--batch", "1", "--iters", "2",
    "--warmup", "0", "--json", work / "bench_onnx.json")
said["bench_default"] = cli(
    "bench", out_dir, "--provider", "cpu", "--batch", "1", "--iters", "2", "--warmup", "0",
    "--json", work / "bench_default.json")
said["bench_eager"] = cli("bench", out_dir, "--formats", "eager", "--provider", "cpu", "--batch", "1", "--iters", "2")
said["train"] = cli("train", "--data", "synth", "--epochs", "1", "--out", work / "run")
said["predict_torchscript"] = cli("predict", images, "--model", out_dir / "model.torchscript.pt")
said["torch_imported"] = sys.modules.get("torch") is not None or sys.modules.get("torchvision") is not None
print(json.dumps(said))
""" % {"files": ONNX_FILES}

NEEDS = "needs torch, which this install lacks (a runtime-only install runs ONNX files: predict, info, bench): "
INSTALL = 'python -m pip install -c constraints.txt -e ".[train]"'


def _images(root: Path) -> Path:
    root.mkdir()
    rng = np.random.default_rng(0)
    for i, (size, mode) in enumerate((((32, 32), "RGB"), ((45, 30), "L"), ((20, 50), "RGBA"))):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).convert(mode).save(root / f"img{i}.png")
    return root


def test_onnx_commands_run_without_torch_and_say_what_they_say_with_it(exported, tmp_path):
    images = _images(tmp_path / "images")
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(exported.out_dir), str(images), str(work)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = json.loads(proc.stdout.strip().splitlines()[-1])

    for name in ONNX_FILES:  # predict: the probabilities the full install computes in this process
        got = said["predict"][name]
        assert got["rc"] == 0, got["err"]
        want = predict([images], exported.out_dir / name, top_k=4).to_dict()
        got = json.loads(got["out"])
        assert [p["path"] for p in got["predictions"]] == [p["path"] for p in want["predictions"]]
        for g, w in zip(got["predictions"], want["predictions"]):
            assert [t["index"] for t in g["top"]] == [t["index"] for t in w["top"]]
            np.testing.assert_allclose(
                [t["probability"] for t in g["top"]], [t["probability"] for t in w["top"]], rtol=0, atol=1e-6
            )

    assert said["info"]["rc"] == 0, said["info"]["err"]
    want = json.loads(json_text(describe(exported.out_dir / "model.onnx").to_dict(), default=str))
    assert json.loads((work / "info.json").read_text()) == want

    assert said["bench_onnx"]["rc"] == 0, said["bench_onnx"]["err"]
    rows = json.loads((work / "bench_onnx.json").read_text())["rows"]
    assert sorted(r["format"] for r in rows) == ["fp16", "int8", "onnx"]
    assert all(r["status"] == "ok" and r["p50_ms"] > 0 for r in rows), rows

    assert said["bench_default"]["rc"] == 0, said["bench_default"]["err"]
    rows = {r["format"]: r for r in json.loads((work / "bench_default.json").read_text())["rows"]}
    for fmt in ("eager", "torchscript"):
        assert rows[fmt]["status"] == "unavailable" and "torch is not installed" in rows[fmt]["reason"]
        assert INSTALL in rows[fmt]["reason"]
    assert all(rows[f]["status"] == "ok" for f in ("onnx", "int8", "fp16"))

    for key, command in (("bench_eager", "bench"), ("train", "train"), ("predict_torchscript", "predict")):
        assert said[key]["rc"] == 1
        assert said[key]["err"].strip().splitlines()[-1] == f"error: mnv2 {command} {NEEDS}{INSTALL}"
    assert not (work / "run").exists()
    assert said["torch_imported"] is False
