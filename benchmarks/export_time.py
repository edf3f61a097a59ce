"""Wall time of ``mnv2 export``: by default TorchScript, ONNX FP32, INT8 (256 calibration images) and FP16; with
``--formats pt2,executorch`` the PyTorch 2 formats (``.pt2``, ``.pte`` and the INT8 ``.pte``).

    python benchmarks/export_time.py [--work DIR] [--repeat 3]
    python benchmarks/export_time.py --formats pt2,executorch --cold-inductor --repeat 3

Workload: MobileNetV2 1.0, 224 px, 20 classes; the checkpoint comes from ``workload.build_checkpoint`` (a built model
with a few SGD steps on synth 224 px and re-estimated BatchNorm statistics). Each repeat runs the real command,
``mnv2 export CKPT --format FORMATS --quantize --calib-size 256`` (``--fp16`` too where ONNX is among the formats), in a
fresh process (imports included, as a user sees it) into a fresh folder; the figure is the median wall time, with the
per-artifact seconds of the manifest. ``--cold-inductor`` gives each repeat an empty TorchInductor cache, as on a
machine that never compiled a ``.pt2`` (its compiled headers and kernels are otherwise reused from /tmp).
Goals: under 60 s on the 2-core CPU, for each of the two sets of formats.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def compare_exporters(ckpt: Path, repeat: int) -> None:
    """torch.onnx.export time of the folded model, alternated in one process (ONNX writing only, no checks):
    dynamo=True as ``mnv2 export`` calls it (the activations switched out of place, ``export.onnx.out_of_place``),
    dynamo=True on torchvision's in-place ReLU6 as built (what ``mnv2 export`` did before), and the deprecated
    TorchScript-based exporter (dynamo=False)."""
    import contextlib
    import warnings

    import torch

    from mnv2export.checkpoint import load_checkpoint
    from mnv2export.export.onnx import out_of_place
    from mnv2export.fold import fold_bn

    model = fold_bn(load_checkpoint(ckpt).build_model())
    x = torch.randn(2, 3, 224, 224)
    torch.set_num_threads(1)  # as export_all runs it
    times: dict[str, list[float]] = {"dynamo=True (shipped)": [], "dynamo=True, in-place ReLU6": [], "dynamo=False": []}
    for _ in range(repeat):
        for name in times:
            t0 = time.perf_counter()
            with (
                warnings.catch_warnings(),
                out_of_place(model) if name != "dynamo=True, in-place ReLU6" else contextlib.nullcontext(),
            ):
                warnings.simplefilter("ignore")
                if name.startswith("dynamo=True"):
                    torch.onnx.export(
                        model,
                        (x,),
                        None,
                        input_names=["input"],
                        output_names=["logits"],
                        opset_version=18,
                        dynamo=True,
                        external_data=False,
                        optimize=True,
                        verbose=False,
                        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                    )
                else:
                    torch.onnx.export(
                        model,
                        (x,),
                        str(ckpt.parent / "legacy.onnx"),
                        input_names=["input"],
                        output_names=["logits"],
                        opset_version=18,
                        dynamo=False,
                        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                    )
            times[name].append(time.perf_counter() - t0)
        print("  " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in times.items()), flush=True)
    print(
        "torch.onnx.export of the folded model (median s): "
        + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in times.items())
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/mnv2-export-time"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--formats", default="torchscript,onnx", help="the export's --format (default: the first goal's)")
    ap.add_argument("--cold-inductor", action="store_true", help="an empty TorchInductor cache for every repeat")
    ap.add_argument("--compare-exporters", action="store_true", help="also time the two torch.onnx exporters")
    args = ap.parse_args()
    from workload import build_checkpoint

    ckpt = args.work / "run" / "best.pt"
    if not ckpt.exists():
        build_checkpoint(ckpt)
    if args.compare_exporters:
        compare_exporters(ckpt, args.repeat)
    walls, cpus, steps = [], [], []
    for i in range(args.repeat):
        out = args.work / f"export-{i}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [
            "mnv2",
            "export",
            str(ckpt),
            "--format",
            args.formats,
            "--quantize",
            "--calib-size",
            "256",
            *(["--fp16"] if "onnx" in args.formats else []),
            "--out",
            str(out),
        ]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        if args.cold_inductor:
            env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-", dir=args.work)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        if done.returncode != 0:
            sys.exit(f"export failed: {done.stderr[-2000:]}")
        manifest = json.loads((out / "manifest.json").read_text())
        steps.append({name: a["seconds"] for name, a in manifest["artifacts"].items()})
        print(
            f"run {i + 1}: {walls[-1]:.1f} s wall, {cpus[-1]:.1f} s CPU  "
            + "  ".join(f"{k} {v:.1f}s" for k, v in steps[-1].items()),
            flush=True,
        )
    print(f"command: {' '.join(cmd[:2])} CKPT {' '.join(cmd[3:-2])}")
    print(
        f"median wall time over {args.repeat} runs: {statistics.median(walls):.1f} s (min {min(walls):.1f}, max {max(walls):.1f}); "
        f"CPU time (user+sys) median {statistics.median(cpus):.1f} s; per artifact (median s): "
        + ", ".join(f"{k} {statistics.median(s[k] for s in steps):.1f}" for k in steps[0])
    )
    try:
        load = os.getloadavg()[0]
        print(f"1-minute load average at the end: {load:.2f} on {os.cpu_count()} CPUs")
    except OSError:
        pass


if __name__ == "__main__":
    main()
