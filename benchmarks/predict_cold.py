"""``mnv2 predict IMAGE --model model.onnx`` as a user runs it once: a cold process, wall time, against the same
command with torch and torchvision imported first, in one run.

    python benchmarks/predict_cold.py [--model M.onnx] [--image IMG] [--repeat 5] [--python PY] [--torch-python PY]
                                      [--json OUT]
    python benchmarks/predict_cold.py --sizes VENV [VENV ...]

Two commands, each a fresh process, run in turn (runtime, torch, runtime, torch, ...) after one untimed run of each
(the files in the page cache, as for a user's second command):

* ``runtime``: ``PY -m mnv2export predict IMG --model M`` (``--python``, default this interpreter): the command as
  it is, whatever it imports;
* ``torch``: ``PY -c "import torch, torchvision.transforms.v2; <the mnv2 CLI>" predict IMG --model M``
  (``--torch-python``, default this interpreter): the same command after the imports the torch path makes (before
  issue 39 every predict made them; torchvision's import brings torch._dynamo). It stays measurable once the runtime
  path no longer imports torch, and equals the runtime command while it still does (ratio about 1).

The figure is median(torch) / median(runtime) of the wall times (goal: at least 5); min and max show the noise.
Each run's exit code and output are checked (the image is classified), and one untimed run of the runtime command
says whether it imported torch. ``--model`` defaults to the workload's ``/tmp/mnv2-bench/export/model.onnx``
(``bench_workload.py`` makes it); ``--image`` defaults to a 400 x 300 JPEG written to a temporary folder.

``--sizes``: the size on disk of each virtual environment's own site-packages (a runtime-only install beside a full
one); a venv made with ``--system-site-packages`` also sees the interpreter's, which is counted apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOAD_MODEL = Path("/tmp/mnv2-bench/export/model.onnx")
TORCH_IMPORTS = "import torch, torchvision.transforms.v2"
CLI = "import sys; from mnv2export.cli import main; sys.exit(main(sys.argv[1:]))"
# the site-packages folders a venv's interpreter sees outside the venv (the base interpreter's)
SYSTEM_SITE = (
    "import site, sys; print(*[p for p in site.getsitepackages() if not p.startswith(sys.prefix)], sep=chr(10))"
)
PROBE = (
    "import sys; from mnv2export.cli import main; rc = main(sys.argv[1:]); "
    "print('torch imported:', 'torch' in sys.modules, file=sys.stderr); sys.exit(rc)"
)


def commands(python: str, torch_python: str, image: Path, model: Path) -> dict[str, list[str]]:
    args = ["predict", str(image), "--model", str(model), "--top-k", "1"]
    return {
        "runtime": [python, "-m", "mnv2export", *args],
        "torch": [torch_python, "-c", f"{TORCH_IMPORTS}; {CLI}", *args],
    }


def run_once(cmd: list[str], image: Path) -> float:
    """Wall seconds of one cold process; a failed or silent run stops the benchmark (its time would mean nothing)."""
    t0 = time.perf_counter()
    r = subprocess.run(
        cmd, check=False, capture_output=True, text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    )
    wall = time.perf_counter() - t0
    if r.returncode != 0 or str(image) not in r.stdout:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed (exit {r.returncode}):\n{r.stderr[-2000:]}")
    return wall


def imports_torch(python: str, image: Path, model: Path) -> bool:
    r = subprocess.run(
        [python, "-c", PROBE, "predict", str(image), "--model", str(model)], check=False, capture_output=True, text=True
    )
    if r.returncode != 0:
        raise SystemExit(f"the probe run failed (exit {r.returncode}):\n{r.stderr[-2000:]}")
    return "torch imported: True" in r.stderr


def time_commands(cmds: dict[str, list[str]], image: Path, repeat: int) -> dict[str, list[float]]:
    for cmd in cmds.values():
        run_once(cmd, image)  # untimed: page cache, bytecode already on disk
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for i in range(repeat):
        for name, cmd in cmds.items():
            times[name].append(run_once(cmd, image))
            print(f"  {i + 1}/{repeat} {name:7s} {times[name][-1]:6.2f} s", flush=True)
    return times


def summary(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t)} for name, t in times.items()}


def site_packages_size(venv: Path) -> dict[str, object]:
    """Bytes of the files under the venv's own site-packages (each file once, links not followed), and whether the
    venv also sees the interpreter's site-packages (``include-system-site-packages``), with their size."""
    cfg = (venv / "pyvenv.cfg").read_text() if (venv / "pyvenv.cfg").is_file() else ""
    system = "include-system-site-packages = true" in cfg
    own = sorted(venv.glob("lib/python3*/site-packages")) + sorted(venv.glob("Lib/site-packages"))
    if not own:
        raise SystemExit(f"{venv}: no lib/python3*/site-packages (not a virtual environment?)")
    out: dict[str, object] = {
        "venv": str(venv),
        "site_packages": str(own[0]),
        "bytes": _tree_bytes(own[0]),
        "system_site_packages": system,
    }
    if system:
        python = venv / "bin" / "python"
        base = subprocess.run(
            [str(python), "-c", SYSTEM_SITE], check=True, capture_output=True, text=True
        ).stdout.split()
        out["system_bytes"] = sum(_tree_bytes(Path(p)) for p in base if Path(p).is_dir())
    return out


def _tree_bytes(root: Path) -> int:
    seen, total = set(), 0
    for folder, _, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(folder, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def default_image(folder: Path) -> Path:
    import numpy as np
    from PIL import Image

    path = folder / "photo.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=WORKLOAD_MODEL)
    ap.add_argument("--image", type=Path)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--python", default=sys.executable, help="interpreter of the runtime command (e.g. a runtime-only venv's)"
    )
    ap.add_argument(
        "--torch-python", default=sys.executable, help="interpreter of the torch command (a venv with torch)"
    )
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument(
        "--sizes", type=Path, nargs="+", metavar="VENV", help="print the site-packages size of each venv and exit"
    )
    a = ap.parse_args()
    if a.sizes:
        for venv in a.sizes:
            s = site_packages_size(venv)
            extra = (
                f" (+ {s['system_bytes'] / 1e6:,.0f} MB of the interpreter's, seen too)"
                if s["system_site_packages"]
                else ""
            )
            print(f"{venv}: {s['bytes'] / 1e6:,.0f} MB in {s['site_packages']}{extra}")
        return
    if not a.model.is_file():
        raise SystemExit(f"{a.model}: no such model (run benchmarks/bench_workload.py, or pass --model)")
    with tempfile.TemporaryDirectory(prefix="mnv2-predict-cold-") as tmp:
        image = a.image or default_image(Path(tmp))
        cmds = commands(a.python, a.torch_python, image, a.model)
        torch_in_runtime = imports_torch(a.python, image, a.model)
        print(f"model {a.model}, image {image}; the runtime command imports torch: {torch_in_runtime}", flush=True)
        stats = summary(time_commands(cmds, image, a.repeat))
    ratio = stats["torch"]["median_s"] / stats["runtime"]["median_s"]
    for name, s in stats.items():
        print(
            f"{name:7s} median {s['median_s']:.2f} s (min {s['min_s']:.2f}, max {s['max_s']:.2f}) over {a.repeat} cold runs"
        )
    print(f"torch / runtime: {ratio:.2f}x (goal >= 5x)")
    if a.json:
        result = {
            "model": str(a.model),
            "repeat": a.repeat,
            "commands": cmds,
            "runtime_imports_torch": torch_in_runtime,
            "stats": stats,
            "ratio": ratio,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        a.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
