"""A training run's folder: its default name, the configuration a ``--resume`` continues with, and claiming the
folder for a run (created, locked, checked: a new run refuses another run's files unless told to overwrite them, a
resume refuses a ``last.pt`` that changed under it, or another number of processes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import distributed as D
from .checkpoint import Checkpoint, load_checkpoint
from .config import BUILTIN_SOURCES, RunConfig
from .errors import CheckpointError, ConfigError, DataError
from .fileio import ensure_dir, folder_lock, sha256_file

if TYPE_CHECKING:
    from .data import DataBundle

log = logging.getLogger(__name__)

# what may change when resuming (anything else would not continue the same run)
RESUMABLE_CHANGES = {"epochs", "workers", "threads", "progress", "plots", "device", "out"}


def default_run_dir(cfg: RunConfig) -> Path:
    """``weights/<data>-<time>``; ``-2``, ``-3``... after it when a run of that second already has the name."""
    name = Path(cfg.data.source).name if not cfg.data.is_builtin else cfg.data.source
    base = Path("weights") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def resume_config(run_dir: Path, flags: dict[str, dict[str, Any]]) -> tuple[RunConfig, Checkpoint]:
    """The configuration stored in ``run_dir/last.pt``, with the few flags that may change on resume."""
    last = run_dir / "last.pt"
    if not last.is_file():
        raise CheckpointError("nothing to resume: no last.pt in the run folder", path=run_dir, hint="start a new run without --resume")
    ckpt = load_checkpoint(last)
    if "resume" not in ckpt.extra or "train_config" not in ckpt.extra:
        raise CheckpointError("checkpoint has no training state to resume from (a best.pt?)", path=last, hint="resume from a run folder's last.pt")
    stored = RunConfig.from_dict({"model": ckpt.model_config.to_dict(), "data": ckpt.data_config.to_dict(), "train": ckpt.extra["train_config"]})
    changed = [
        f"{section}.{k}" for section, values in flags.items() for k, v in values.items()
        if v is not None and not (section == "train" and k in RESUMABLE_CHANGES) and not _same(k, getattr(getattr(stored, section), k), v)
    ]
    allowed = set(RESUMABLE_CHANGES)
    if stored.train.sync_bn and str(ckpt.train_summary.get("device", "")).startswith("cpu"):
        allowed.add("sync_bn")  # recorded by a CPU run, where it never applied (now refused up front): may be dropped
        changed = [c for c in changed if c != "train.sync_bn"]
    if changed:
        raise ConfigError(f"cannot change {', '.join(changed)} when resuming", hint="resume with the run's own settings, or start a new run")
    done, epochs = int(ckpt.train_summary.get("epoch", 0)), flags.get("train", {}).get("epochs")
    if epochs is not None and epochs < done:
        raise ConfigError(f"--epochs {epochs} is fewer than the {done} the run has done", path=last,
                          hint=f"pass --epochs {done + 1} or more to train further (best.pt and last.pt hold the run as it is)")
    train = {k: v for k, v in flags.get("train", {}).items() if k in allowed and v is not None}
    return stored.override({}, {}, train), ckpt


# what a run writes into its folder (--overwrite removes these and nothing else)
RUN_OUTPUTS = ("best.pt", "last.pt", "metrics.csv", "config.json", "loss_curve.png", "kernels.png", "feature_maps_shallow.png",
               "feature_maps_deep.png", "confusion_matrix.png")
RUN_FOLDERS = ("visualize",)  # `mnv2 visualize best.pt` writes here by default
# a killed run's DataLoader workers hold its folder lock until they notice (every 5 s): `--resume` at once waits for them
RUN_LOCK_WAIT_S = 10.0


def resume_hint(last: Path) -> str:
    """How to go on after the job stopped: from the epoch ``last`` holds (as rank 0 left it), or from the start."""
    try:
        epoch = int(load_checkpoint(last).train_summary["epoch"])
    except Exception:  # noqa: BLE001 - a hint only: none readable (another node's file system, no last.pt yet)
        return "see the other process's error above; no last.pt to resume from here: start the run again"
    return f"{last} holds epoch {epoch}: continue with --resume (see the other process's error above)"


def check_same_world_size(resume_from: Checkpoint, info: D.DistInfo) -> None:
    """A run resumes with the number of processes it was trained with: its saved learning-rate schedule counts the
    steps per epoch of that many processes, and its global batch is ``batch_size`` times that many."""
    before = int(resume_from.train_summary.get("world_size", 1))
    if before != info.world_size:
        how = f"torchrun --nproc_per_node {before} -m mnv2export train --resume ..." if before > 1 else "mnv2 train --resume ... without torchrun"
        raise ConfigError(
            f"the run was trained by {_processes(before)}, this resume has {_processes(info.world_size)}: the learning-rate "
            "schedule (steps per epoch) and the global batch would change", path=None,
            hint=f"resume with the same number of processes ({how})")


def _processes(n: int) -> str:
    return f"{n} process" + ("es" if n != 1 else "")


def claim_run_folder(run_dir: Path, stack: contextlib.ExitStack, *, resume_from: Checkpoint | None, overwrite: bool) -> bool:
    """Create and lock ``run_dir`` for this run (the lock held until ``stack`` closes), then check it while holding the
    lock: a run that waited for another one to finish finds the folder as that run left it, so a second new run into
    it is refused and a --resume whose last.pt changed meanwhile does not train from the stale one. Returns whether
    the folder was created."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError("run folder path is a file", path=run_dir, hint="choose another --out")
    created = not run_dir.exists()
    ensure_dir(run_dir)  # an unwritable output is found before the data is read
    stack.enter_context(folder_lock(run_dir, "another process is training into this run folder",
                                    "wait for it to finish, or choose another --out", wait=RUN_LOCK_WAIT_S))
    if resume_from is None:
        check_run_folder(run_dir, overwrite=overwrite)
    else:
        last = run_dir / "last.pt"
        if not last.is_file() or sha256_file(last) != resume_from.sha256:
            raise ConfigError("the run changed since --resume read its last.pt (another process trained in it meanwhile)",
                              path=last, hint="run the same --resume again to continue from where it is now")
    return created


def check_run_folder(run_dir: Path, *, overwrite: bool) -> None:
    """A new run's folder (an existing one, locked): empty, or ``overwrite`` and a folder holding a run (its outputs go
    once the data and model are ready)."""
    if any(run_dir.iterdir()):
        if not overwrite:
            raise ConfigError("run folder already holds files", path=run_dir,
                              hint="--resume continues the run in it, --overwrite replaces it; or choose another --out")
        if not any((run_dir / f).is_file() for f in ("last.pt", "best.pt", "config.json", "metrics.csv")):
            raise ConfigError("folder is not a training run (no last.pt, best.pt, config.json or metrics.csv): refusing to overwrite it",
                              path=run_dir, hint="choose another --out")


PATH_SETTINGS = ("source", "data_dir", "class_index", "init_from")  # recorded as absolute paths (RunConfig.with_absolute_paths)


def _same(key: str, stored: Any, given: Any) -> bool:
    """A flag's value is the run's: a path given relative to here names the same file as the absolute one recorded."""
    if key in PATH_SETTINGS and isinstance(stored, str) and isinstance(given, str) and given not in BUILTIN_SOURCES:
        return os.path.abspath(stored) == os.path.abspath(given)
    return stored == given


def check_same_data(resume_from: Checkpoint, data: DataBundle, source: str) -> None:
    """A run resumes on the data it was trained on: the same classes (a renamed class folder would give every label
    after it another meaning) and as many training images (the learning-rate schedule counts its steps per epoch).
    Other changes (a re-encoded image, one swapped for another) are warned about, not refused."""
    before, now = list(resume_from.class_names), list(data.class_names)
    hint = "resume with the run's data, or start a new run (--init-from RUN/best.pt starts from its weights)"
    if before != now:
        gone, new = [c for c in before if c not in now], [c for c in now if c not in before]
        what = "; ".join(part for part in (f"gone: {', '.join(gone)}" if gone else "", f"new: {', '.join(new)}" if new else "") if part)
        raise DataError(f"the classes changed since the run started ({what or 'the same names in another order'})", path=source, hint=hint)
    trained_on = (resume_from.train_summary.get("data") or {}).get("train_images")
    if trained_on is not None and int(trained_on) != len(data.train):
        raise DataError(f"the training set changed since the run started ({trained_on} images, now {len(data.train)}): "
                        "its learning-rate schedule and data order count the images", path=source, hint=hint)
    fingerprint = resume_from.provenance.get("data_fingerprint")
    if fingerprint and fingerprint != data.fingerprint:
        log.warning("the data changed since the run started (the same classes and image count, but a file's name or size differs): resuming on it")
