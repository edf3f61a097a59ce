"""Wall time of ``mnv2 export`` for every format: TorchScript, ONNX FP32, INT8 (256 calibration images), FP16.

    python benchmarks/export_time.py [--work DIR] [--repeat 3]

Workload: MobileNetV2 1.0, 224 px, 20 classes; the checkpoint comes from ``workload.build_checkpoint`` (a built model
with a few SGD steps on synth 224 px and re-estimated BatchNorm statistics). Each repeat runs the real command,
``mnv2 export CKPT --format all --quantize --calib-size 256 --fp16``, in a fresh process (imports included, as a user
sees it) into a fresh folder; the figure is the median wall time, with the per-artifact seconds of the manifest.
Goal: under 60 s on the 2-core dev CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/mnv2-export-time"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from workload import build_checkpoint

    ckpt = args.work / "run" / "best.pt"
    if not ckpt.exists():
        build_checkpoint(ckpt)
    walls, steps = [], []
    for i in range(args.repeat):
        out = args.work / f"export-{i}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = ["mnv2", "export", str(ckpt), "--format", "all", "--quantize", "--calib-size", "256", "--fp16", "--out", str(out)]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        walls.append(time.perf_counter() - t0)
        if done.returncode != 0:
            sys.exit(f"export failed: {done.stderr[-2000:]}")
        manifest = json.loads((out / "manifest.json").read_text())
        steps.append({name: a["seconds"] for name, a in manifest["artifacts"].items()})
        print(f"run {i + 1}: {walls[-1]:.1f} s  " + "  ".join(f"{k} {v:.1f}s" for k, v in steps[-1].items()), flush=True)
    print(f"command: {' '.join(cmd[:2])} CKPT {' '.join(cmd[3:-2])}")
    print(f"median wall time over {args.repeat} runs: {statistics.median(walls):.1f} s (min {min(walls):.1f}, max {max(walls):.1f}); "
          "per artifact (median s): " + ", ".join(f"{k} {statistics.median(s[k] for s in steps):.1f}" for k in steps[0]))
    try:
        load = os.getloadavg()[0]
        print(f"1-minute load average at the end: {load:.2f} on {os.cpu_count()} CPUs")
    except OSError:
        pass


if __name__ == "__main__":
    main()
