"""The folder layout and the name of every file the tool writes: one list that every command reads.

Ground floor: imports nothing of ours (and nothing heavy), so that any layer, down to the file checks, can name a file
without importing the command that writes it.
"""

from __future__ import annotations

from pathlib import Path

# ------------------------------------------------------------------------------------- default folders (working dir)
DATA_DIR = Path("data")  # the default dataset root
WEIGHTS_DIR = Path("weights")  # where `mnv2 train` puts its runs (weights/<data>-<time>/)
EXPORT_DIR = Path("export")  # where `mnv2 export` puts its folders (export/<run>/)
RUNS_DIR = Path("runs")  # where `mnv2 pipeline` puts its runs (runs/<name>/)

# ------------------------------------------------------------------------------ a training run (weights/<run>/)
BEST_FILE = "best.pt"
LAST_FILE = "last.pt"
METRICS_FILE = "metrics.csv"
RUN_CONFIG_FILE = "config.json"
LOSS_CURVE_FILE = "loss_curve.png"
KERNELS_FILE = "kernels.png"
FEATURE_MAP_FILES = (
    "feature_maps_shallow.png",
    "feature_maps_deep.png",
)  # feature_maps() writes feature_maps_<block>.png
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
# what a run writes into its folder (--overwrite removes these and nothing else, and visualize's own pictures)
RUN_OUTPUTS = (
    BEST_FILE,
    LAST_FILE,
    METRICS_FILE,
    RUN_CONFIG_FILE,
    LOSS_CURVE_FILE,
    KERNELS_FILE,
    *FEATURE_MAP_FILES,
    CONFUSION_MATRIX_FILE,
)

# `mnv2 visualize`: its default folder, beside the checkpoint, and what it writes there
VISUALIZE_DIR = "visualize"
INPUT_FILE = "input.png"
VISUALIZE_FILES = (KERNELS_FILE, INPUT_FILE, *FEATURE_MAP_FILES)

# ------------------------------------------------------------------------------- an export folder (export/<run>/)
TORCHSCRIPT_FILE = "model.torchscript.pt"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
FP16_FILE = "model.fp16.onnx"
PT2_FILE = "model.pt2"
PTE_FILE = "model.pte"
PTE_INT8_FILE = "model.int8.pte"
MANIFEST_FILE = "manifest.json"
ARTIFACT_FILES = (
    TORCHSCRIPT_FILE,
    ONNX_FILE,
    INT8_FILE,
    FP16_FILE,
    PT2_FILE,
    PTE_FILE,
    PTE_INT8_FILE,
)  # what an export owns in its folder (with the manifest)

# ------------------------------------------------------------------------------- a pipeline run (runs/<name>/)
PIPELINE_FILE = "pipeline.json"
DATA_SAMPLES_FILE = "data_samples.png"
CHECK_FILE = "check.json"
BENCH_JSON_FILE = "bench.json"
BENCH_CSV_FILE = "bench.csv"
BENCH_PLOT_FILE = "bench.png"
REPORT_FILE = "report.md"
PIPELINE_OUTPUTS = (
    PIPELINE_FILE,
    DATA_SAMPLES_FILE,
    CHECK_FILE,
    BENCH_JSON_FILE,
    BENCH_CSV_FILE,
    BENCH_PLOT_FILE,
    REPORT_FILE,
)
PIPELINE_FOLDERS = (WEIGHTS_DIR.name, EXPORT_DIR.name)  # the run's training run and export folder
