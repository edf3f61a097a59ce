"""An artifact's embedded metadata, checked once for every reader: the keys every command needs, values of the right
type (:func:`parse_metadata`), weights that are the network its ``model_config`` describes (:func:`check_model_config`),
and the preprocessing it prescribes (:func:`preprocess`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError


def parse_metadata(raw: str | bytes | None, p: Path, kind: str) -> dict[str, Any]:
    if raw is None:
        raise ArtifactError("artifact carries no mnv2export metadata", path=p, hint="export it with `mnv2 export`")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArtifactError(
            "artifact metadata is not valid JSON", path=p, hint="export it again with `mnv2 export`"
        ) from None
    return check_metadata(meta, p, kind)


def check_metadata(meta: Any, p: Path, kind: str) -> dict[str, Any]:
    """Metadata already decoded from JSON (a format whose file holds it inside its own structure: .pt2, .pte), checked
    as :func:`parse_metadata` checks it."""
    if not isinstance(meta, dict):
        raise ArtifactError(
            f"artifact metadata is a JSON {type(meta).__name__}, not an object",
            path=p,
            hint="export it again with `mnv2 export`",
        )
    missing = [k for k in ("input_size", "class_names", "mean", "std", "data_config") if k not in meta]
    if missing:
        raise ArtifactError(
            f"artifact metadata lacks {', '.join(missing)}", path=p, hint="export it again with `mnv2 export`"
        )
    problems = metadata_value_problems(meta)
    if problems:
        raise ArtifactError(
            f"artifact metadata is not valid: {'; '.join(problems)}", path=p, hint="export it again with `mnv2 export`"
        )
    meta.setdefault("format", kind)
    meta.setdefault("precision", "fp32")
    return meta


def metadata_value_problems(meta: dict[str, Any]) -> list[str]:
    """What is wrong with the values an artifact's metadata holds (the keys are there): every reader (``predict``,
    ``check``, ``bench``, ``info``) trusts these, so a hand-edited value is named here, not met later as a crash."""

    from ..params import is_number as _is_number

    def whole(v: Any) -> bool:
        return _is_number(v) and isinstance(v, int) and v > 0

    def number(v: Any) -> bool:
        return _is_number(v) and math.isfinite(v)

    problems = []
    size, names = meta["input_size"], meta["class_names"]
    if not (isinstance(size, list) and len(size) == 3 and all(whole(v) for v in size) and size[0] == 3):
        problems.append(f"input_size {json.dumps(size)} (expected [3, H, W], H and W whole numbers > 0)")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        problems.append("class_names is not a non-empty list of names")
    elif "num_classes" in meta and meta["num_classes"] != len(names):
        problems.append(f"num_classes {json.dumps(meta['num_classes'])} but {len(names)} class_names")
    for key in ("mean", "std"):
        v = meta[key]
        if not (
            isinstance(v, list)
            and len(v) == 3
            and all(number(x) for x in v)
            and (key == "mean" or all(x > 0 for x in v))
        ):
            problems.append(f"{key} {json.dumps(v)} (expected 3 numbers{', each > 0' if key == 'std' else ''})")
    if not isinstance(meta["data_config"], dict):
        problems.append("data_config is not an object")
    for key in ("input_name", "output_name"):
        if key in meta and not (isinstance(meta[key], str) and meta[key]):
            problems.append(f"{key} {json.dumps(meta[key])} is not a name")
    return problems


def preprocess(paths: list[str | Path], metadata: dict[str, Any]) -> tuple[np.ndarray, list[str], list[Any]]:
    """Decode image files into the batch a runner takes, with the artifact's own validation preprocessing.

    Returns (batch float32 N x 3 x H x W, paths kept, ImageReadError for each image that could not be read). Pillow
    and NumPy only (:mod:`mnv2export.imaging`, held equal to torchvision's eval transform by its tests), so that an
    ONNX file runs on an install without torch.
    """
    from ..config import DataConfig
    from ..imaging import load_batch

    return load_batch(list(paths), DataConfig.from_dict(metadata["data_config"]))


def check_model_config(meta: dict[str, Any], kernels: int, p: Path) -> None:
    """An :class:`ArtifactError` unless the file's ``kernels`` (elements of its weights of rank 2 or more) are those of
    the network the metadata's ``model_config`` describes: convolution and linear kernels are exported as they are
    (folding scales them). Biases are not compared: a bias folded from an untrained BatchNorm is all zeros, and the
    exporters leave such a bias out. The network's kernel sizes are computed from the config, without torch
    (:func:`mnv2export.architecture.kernel_params`, held equal to the torch model's by tests/test_architecture.py)."""
    from ..architecture import kernel_params
    from ..config import ModelConfig
    from ..errors import Mnv2Error

    if not isinstance(meta.get("model_config"), dict):
        raise ArtifactError("artifact metadata lacks model_config", path=p, hint="export it again with `mnv2 export`")
    try:
        cfg = ModelConfig.from_dict(meta["model_config"])
    except Mnv2Error as exc:
        raise ArtifactError(
            f"artifact metadata's model_config is not valid: {exc.what}",
            path=p,
            hint="export it again with `mnv2 export`",
        ) from None
    want = kernel_params(cfg)
    if kernels != want:
        raise ArtifactError(
            f"the model_config in the file's metadata does not describe its weights ({kernels:,} convolution and "
            f"linear kernel weights in the file, {want:,} in the model that model_config describes)",
            path=p,
            hint="the metadata was changed or belongs to another model: export it again with `mnv2 export`",
        )
