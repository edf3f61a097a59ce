"""Fixed names inside the artifacts and the export settings, shared by the exporters, the manifest and the runtime
(other commands rely on them). The artifacts' file names are :mod:`mnv2export.layout`'s."""

from __future__ import annotations

from ..params import check_int

TORCHSCRIPT_METADATA = "mnv2_metadata.json"  # the `_extra_files` entry of a TorchScript file
ONNX_METADATA = "mnv2_metadata"  # the `metadata_props` key of an ONNX file

INPUT_NAME = "input"  # N x 3 x H x W, float32, normalised
OUTPUT_NAME = "logits"  # N x num_classes, float32

ONNX_EXPORTER = "torch.onnx.export(dynamo=True)"  # recorded in every ONNX file's metadata and the manifest

CALIB_METHODS = ("minmax", "entropy", "percentile")
MAX_CALIB_SIZE = 10_000
AGREEMENT_IMAGES = 64  # an INT8 export's top-1 agreement with FP32 is measured on this many calibration images
# minmax calibration sets each activation's INT8 range to the extremes the calibration images reach, and a new image
# exceeds the largest of n (exchangeable) images with probability 1/(n+1): half of all images for n = 1, ~3% for 32.
MIN_CALIB_SIZE = 32  # fewer is accepted, with a warning (the INT8 model may fail its check)


def check_calib_size(n: int) -> int:
    return check_int("calib_size", n, 1, MAX_CALIB_SIZE)


MANIFEST_FORMAT = "mnv2export.manifest"
MANIFEST_VERSION = 1

# what `mnv2 export` writes unless told: the formats that take seconds; `all` adds .pt2 and .pte (where installed),
# whose compilers take 15-45 s at 224 px
DEFAULT_GROUPS = "torchscript,onnx"
