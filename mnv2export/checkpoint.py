"""Self-describing checkpoints.

A checkpoint is a dict of primitives and tensors only, so it loads with ``torch.load(weights_only=True)``, and this
loader never loads any other way: a file carrying a pickled object is refused. It holds all an exporter needs::

    format, schema_version            "mnv2export.checkpoint", 1
    model_config, data_config         ModelConfig / DataConfig as dicts
    class_names                       list[str], index = class id
    state_dict                        the model's weights (the EMA weights when EMA was on)
    train_summary                     epoch, epochs, best_val_acc, best_epoch, final metrics, images skipped
    provenance                        package, torch, torchvision and python versions, data fingerprint, time

``last.pt`` also holds ``train_config`` and ``resume`` (optimizer, scheduler, scaler, EMA and RNG state).
"""

from __future__ import annotations

import io
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .config import DataConfig, ModelConfig
from .errors import CheckpointError, ConfigError, first_line
from .fileio import CHECKPOINT_HINT, atomic_path, require_checkpoint_file, sha256_file
from .safe_load import refuse_non_finite, torch_load_safely

FORMAT = "mnv2export.checkpoint"
SCHEMA_VERSION = 1


@dataclass
class Checkpoint:
    model_config: ModelConfig
    data_config: DataConfig
    class_names: list[str]
    state_dict: dict[str, torch.Tensor]
    train_summary: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # train_config, resume state (last.pt)
    path: Path | None = None
    sha256: str | None = None

    def to_payload(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "model_config": self.model_config.to_dict(),
            "data_config": self.data_config.to_dict(),
            "class_names": list(self.class_names),
            "state_dict": self.state_dict,
            "train_summary": self.train_summary,
            "provenance": self.provenance,
            **self.extra,
        }

    def build_model(self) -> nn.Module:
        """The trained model, FP32, eval mode, on CPU."""
        from .model import build_model

        model = build_model(self.model_config)
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"weights do not fit the model its config describes: {first_line(exc)}",
                path=self.path,
                hint="the checkpoint was edited or written by another tool",
            ) from None
        return model.eval()

    def metadata(self) -> dict[str, Any]:
        """What every exported artifact embeds about its source (JSON-ready)."""
        from .data.transforms import preprocessing_spec

        d = self.data_config
        return {
            "class_names": list(self.class_names),
            "num_classes": self.model_config.num_classes,
            "input_size": [3, d.img_size, d.img_size],
            "resize_size": d.resize,
            "interpolation": d.interpolation,
            "mean": list(d.mean),
            "std": list(d.std),
            "preprocessing": preprocessing_spec(d),
            "model_config": self.model_config.to_dict(),
            "data_config": without_paths(d.to_dict()),
            "source_checkpoint": self.path.name if self.path else None,
            "source_checkpoint_sha256": self.sha256,
            "train_summary": {
                k: without_paths(v) if k == "data" else v for k, v in self.train_summary.items() if k in _SUMMARY_KEYS
            },
            "versions": versions(),
        }


def without_paths(values: Any) -> Any:
    """A data config or data summary as a shipped artifact embeds it: a folder source, ``data_dir`` and ``class_index``
    reduced to their last component (the training machine's directories stay in the checkpoint; the data fingerprint
    still identifies the data)."""
    if not isinstance(values, dict):
        return values
    out = dict(values)
    for key in ("source", "data_dir", "class_index"):
        value = out.get(key)
        if isinstance(value, str) and not (key == "source" and value in ("synth", "fashion-mnist")):
            out[key] = re.split(r"[\\/]", value.rstrip("\\/"))[-1] or value
    return out


# what an artifact carries of the training summary (not the history, confusion matrix or skipped paths)
_SUMMARY_KEYS = (
    "epoch",
    "epochs",
    "best_val_acc",
    "best_epoch",
    "final",
    "images_skipped",
    "world_size",
    "amp",
    "data",
)


def versions() -> dict[str, str]:
    import torchvision

    return {
        "mnv2export": __version__,
        "torch": str(torch.__version__),  # TorchVersion is a class weights_only loading refuses
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
    }


def provenance(data_fingerprint: str | None) -> dict[str, Any]:
    return {**versions(), "data_fingerprint": data_fingerprint, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def save_checkpoint(ckpt: Checkpoint, path: str | Path) -> Path:
    """Write atomically: a run killed at any moment leaves the previous file or the new one, never half of one."""
    path = Path(path)
    buffer = io.BytesIO()  # serialise in memory, then write with Python's I/O: a full disk is an OSError (ENOSPC)
    torch.save(ckpt.to_payload(), buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load and validate a checkpoint, safely (``weights_only=True``). Every failure is a :class:`CheckpointError`."""
    p = require_checkpoint_file(path)
    return _from_payload(torch_load_safely(p, "checkpoint", CHECKPOINT_HINT), p)


# the entries a checkpoint's own fields hold; any other (train_config, resume) goes to Checkpoint.extra
_KNOWN_KEYS = frozenset(
    (
        "format",
        "schema_version",
        "model_config",
        "data_config",
        "class_names",
        "state_dict",
        "train_summary",
        "provenance",
    )
)


def _from_payload(payload: Any, p: Path) -> Checkpoint:
    """The checkpoint a loaded file holds, checked entry by entry (the first fault found is the error)."""
    _require_checkpoint_format(payload, p)
    _require_readable_schema(payload.get("schema_version"), p)
    _require_mobilenet_v2(payload, p)
    model_cfg, data_cfg, class_names, state_dict = _read_entries(payload, p)
    _require_weights_fit(model_cfg, class_names, state_dict, p)
    return Checkpoint(
        model_config=model_cfg,
        data_config=data_cfg,
        class_names=class_names,
        state_dict=state_dict,
        train_summary=dict(payload.get("train_summary") or {}),
        provenance=dict(payload.get("provenance") or {}),
        extra={k: v for k, v in payload.items() if k not in _KNOWN_KEYS},
        path=p,
        sha256=sha256_file(p),
    )


def _require_checkpoint_format(payload: Any, p: Path) -> None:
    """A dict marked as ours; a bare state dict (torchvision's weights, say) is told apart, as --init-from takes it."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            raise CheckpointError(
                "file is a bare state dict, not a self-describing checkpoint",
                path=p,
                hint="use it with `mnv2 train --init-from`, or pass a checkpoint written by `mnv2 train`",
            )
        raise CheckpointError("file is not an mnv2export checkpoint", path=p, hint=CHECKPOINT_HINT)


def _require_readable_schema(version: Any, p: Path) -> None:
    """A whole-number schema version from 1 to the one this tool writes (a bool is refused though it is an int)."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(
            f"checkpoint schema version {version!r} is not valid (this tool writes {SCHEMA_VERSION})",
            path=p,
            hint="the file was not written by `mnv2 train`, or was edited; pass a best.pt or last.pt written by it",
        )
    if version > SCHEMA_VERSION:
        raise CheckpointError(
            f"checkpoint schema version {version} is newer than this tool understands ({SCHEMA_VERSION})",
            path=p,
            hint="upgrade mnv2export",
        )


def _require_mobilenet_v2(payload: dict[str, Any], p: Path) -> None:
    arch = (payload.get("model_config") or {}).get("arch")
    if arch != "mobilenet_v2":
        raise CheckpointError(
            f"checkpoint is of another architecture ({arch!r})", path=p, hint="this tool handles MobileNetV2 only"
        )


def _read_entries(payload: dict[str, Any], p: Path) -> tuple[ModelConfig, DataConfig, list[str], Any]:
    """The model and data configs, class names and state dict; a missing entry or an invalid setting is an error."""
    try:
        model_cfg = ModelConfig.from_dict(payload["model_config"])
        data_cfg = DataConfig.from_dict(payload["data_config"])
        class_names = [str(c) for c in payload["class_names"]]
        state_dict = payload["state_dict"]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(
            f"checkpoint lacks a required entry ({exc})", path=p, hint="re-train with `mnv2 train`"
        ) from None
    except ConfigError as exc:
        raise CheckpointError(
            f"checkpoint holds an invalid setting: {exc.what}", path=p, hint="re-train with `mnv2 train`"
        ) from None
    return model_cfg, data_cfg, class_names, state_dict


def _require_weights_fit(model_cfg: ModelConfig, class_names: list[str], state_dict: Any, p: Path) -> None:
    """One class name per output, and weights that are finite tensors (whether they fit the model's layers is
    checked when the model is built)."""
    if len(class_names) != model_cfg.num_classes:
        raise CheckpointError(
            f"checkpoint names {len(class_names)} classes but its model has {model_cfg.num_classes}",
            path=p,
            hint="the checkpoint was edited; re-train",
        )
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(
            "checkpoint weights are not a state dict of tensors", path=p, hint="re-train with `mnv2 train`"
        )
    refuse_non_finite(
        state_dict,
        "checkpoint weights",
        p,
        "the run diverged before this file was saved, or it was edited: use another checkpoint, or train again",
    )
