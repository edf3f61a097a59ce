"""A training run's folder: its default name, its ``config.json``, the configuration a ``--resume`` continues with,
and claiming the folder for a run (created, locked, checked: a new run refuses another run's files unless told to
overwrite them, and overwrites only a folder its config.json proves a run's; a resume refuses a ``last.pt`` that
changed under it, or another number of processes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import distributed as D
from ..checkpoint import Checkpoint, load_checkpoint
from ..config import BUILTIN_SOURCES, RunConfig
from ..errors import CheckpointError, ConfigError, DataError
from ..fileio import ensure_dir, folder_lock, remove_outputs, sha256_file
from ..layout import LAST_FILE, RUN_CONFIG_FILE, RUN_OUTPUTS, VISUALIZE_DIR, VISUALIZE_FILES

if TYPE_CHECKING:
    from ..data import DataBundle

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


def resume_config(run_dir: Path, flags: dict[str, dict[str, Any]]) -> tuple[RunConfig, Checkpoint | None]:
    """The configuration stored in ``run_dir/last.pt``, with the few flags that may change on resume. A run that saved
    no last.pt yet (see :func:`restart_config`) gives its config.json's configuration and no checkpoint: it starts
    from epoch 0, as a new run into its folder."""
    last = run_dir / LAST_FILE
    if not last.is_file():
        return restart_config(run_dir, flags), None
    ckpt = load_checkpoint(last)
    if "resume" not in ckpt.extra or "train_config" not in ckpt.extra:
        raise CheckpointError(
            "checkpoint has no training state to resume from (a best.pt?)",
            path=last,
            hint="resume from a run folder's last.pt",
        )
    stored = RunConfig.from_dict(
        {"model": ckpt.model_config.to_dict(), "data": ckpt.data_config.to_dict(), "train": ckpt.extra["train_config"]}
    )
    allowed = set(RESUMABLE_CHANGES)
    if stored.train.sync_bn and str(ckpt.train_summary.get("device", "")).startswith("cpu"):
        allowed.add("sync_bn")  # recorded by a CPU run, where it never applied (now refused up front): may be dropped
    _refuse_changes(stored, flags, allowed)
    done, epochs = int(ckpt.train_summary.get("epoch", 0)), flags.get("train", {}).get("epochs")
    if epochs is not None and epochs < done:
        raise ConfigError(
            f"{{epochs}} = {epochs} is fewer than the {done} the run has done",
            path=last,
            hint=f"pass {{epochs}} {done + 1} or more to train further (best.pt and last.pt hold the run as it is)",
        )
    train = {k: v for k, v in flags.get("train", {}).items() if k in allowed and v is not None}
    return stored.override({}, {}, train), ckpt


def restart_config(run_dir: Path, flags: dict[str, dict[str, Any]]) -> RunConfig:
    """The configuration of a run that stopped before its first checkpoint (killed while starting, the disk full at
    the first write), which left its config.json alone in the folder: ``--resume`` starts it from epoch 0 with those
    settings (and the flags that may change on resume). A folder whose run saved results but lost its last.pt is
    refused: starting again would replace them."""
    sections = read_run_config(run_dir)
    if sections is None:
        raise CheckpointError(
            "nothing to resume: no last.pt in the run folder", path=run_dir, hint="start a new run without --resume"
        )
    saved = saved_results(run_dir)
    if saved:
        raise CheckpointError(
            f"nothing to resume: no last.pt, but the run saved {', '.join(saved)}",
            path=run_dir,
            hint="{overwrite} starts the run again (those files go), or choose another {out}",
        )
    try:
        stored = RunConfig.from_dict(sections)
    except ConfigError as exc:
        raise ConfigError(
            f"the run's config.json holds a setting this version cannot read: {exc.what}",
            path=run_dir / RUN_CONFIG_FILE,
            hint="resume with the version that started the run, or start a new run",
        ) from None
    _refuse_changes(stored, flags, set(RESUMABLE_CHANGES))
    log.info(
        "no last.pt in %s: the run stopped before its first checkpoint; starting it from epoch 0 with the settings of its %s",
        run_dir,
        RUN_CONFIG_FILE,
    )
    return stored.override(
        {}, {}, {k: v for k, v in flags.get("train", {}).items() if k in RESUMABLE_CHANGES and v is not None}
    )


def _refuse_changes(stored: RunConfig, flags: dict[str, dict[str, Any]], allowed: set[str]) -> None:
    """A :class:`ConfigError` naming every flag given that differs from ``stored`` and is not ``allowed`` to."""
    changed = [
        f"{section}.{k}"
        for section, values in flags.items()
        for k, v in values.items()
        if v is not None
        and not (section == "train" and k in allowed)
        and not _same(k, getattr(getattr(stored, section), k), v)
    ]
    if changed:
        raise ConfigError(
            f"cannot change {', '.join(changed)} when resuming",
            hint="resume with the run's own settings, or start a new run",
        )


# config.json's schema marker: what proves a folder is a run's (and so whose files --overwrite may remove)
RUN_CONFIG_FORMAT, RUN_CONFIG_SCHEMA = "mnv2export.run_config", 1
_RUN_CONFIG_MAX_BYTES = 1 << 20  # a run's is a few KiB: a larger file is someone else's, not read whole
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
        how = (
            f"torchrun --nproc_per_node {before} -m mnv2export train --resume ..."
            if before > 1
            else "mnv2 train --resume ... without torchrun"
        )
        raise ConfigError(
            f"the run was trained by {_processes(before)}, this resume has {_processes(info.world_size)}: the learning-rate "
            "schedule (steps per epoch) and the global batch would change",
            path=None,
            hint=f"resume with the same number of processes ({how})",
        )


def _processes(n: int) -> str:
    return f"{n} process" + ("es" if n != 1 else "")


def claim_run_folder(
    run_dir: Path, stack: contextlib.ExitStack, *, resume_from: Checkpoint | None, overwrite: bool
) -> bool:
    """Create and lock ``run_dir`` for this run (the lock held until ``stack`` closes), then check it while holding the
    lock: a run that waited for another one to finish finds the folder as that run left it, so a second new run into
    it is refused and a --resume whose last.pt changed meanwhile does not train from the stale one. Returns whether
    the folder was created."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError("run folder path is a file", path=run_dir, hint="choose another {out}")
    created = not run_dir.exists()
    ensure_dir(run_dir)  # an unwritable output is found before the data is read
    stack.enter_context(
        folder_lock(
            run_dir,
            "another process is training into this run folder",
            "wait for it to finish, or choose another {out}",
            wait=RUN_LOCK_WAIT_S,
        )
    )
    if resume_from is None:
        check_run_folder(run_dir, overwrite=overwrite)
    else:
        last = run_dir / LAST_FILE
        if not last.is_file() or sha256_file(last) != resume_from.sha256:
            raise ConfigError(
                "the run changed since --resume read its last.pt (another process trained in it meanwhile)",
                path=last,
                hint="run the same --resume again to continue from where it is now",
            )
    return created


def check_run_folder(run_dir: Path, *, overwrite: bool) -> None:
    """A new run's folder (an existing one, locked): empty; or holding a run that saved nothing but its config.json;
    or, with ``overwrite``, holding a run, as its config.json proves (its outputs go once the data and model are ready:
    :func:`remove_run_outputs`). Partial files of a killed run's writes are removed."""
    leftovers = [p for p in run_dir.iterdir() if _partial_write(p.name)]
    if len(leftovers) == sum(1 for _ in run_dir.iterdir()):
        _remove(leftovers)
        return
    is_run = read_run_config(run_dir) is not None
    if is_run and not saved_results(run_dir):
        # A run that stopped while starting (killed, or the disk full at its first checkpoint) left config.json alone.
        # Nothing is lost by starting there: --resume starts it from epoch 0 with its own settings (restart_config),
        # and a new run, with or without --overwrite, starts with the settings given, rewriting config.json. Refusing
        # either would leave the folder stuck (each refusal pointing at the other).
        log.info(
            "%s holds the %s of a run that saved no checkpoint (nothing to lose): starting there",
            run_dir,
            RUN_CONFIG_FILE,
        )
    elif not overwrite:
        raise ConfigError(
            "run folder already holds files",
            path=run_dir,
            hint="--resume continues the run in it, {overwrite} replaces it; or choose another {out}",
        )
    elif not is_run and (run_dir / RUN_CONFIG_FILE).exists():
        raise ConfigError(
            f"{RUN_CONFIG_FILE} is not a training run's (no mnv2export marker or run settings)",
            path=run_dir / RUN_CONFIG_FILE,
            hint="refusing to overwrite the folder; choose another {out}",
        )
    elif not is_run:
        raise ConfigError(
            f"folder is not a training run (no {RUN_CONFIG_FILE} written by `mnv2 train`): refusing to overwrite it",
            path=run_dir,
            hint="choose another {out}",
        )
    _remove(leftovers)


def run_config_json(cfg: RunConfig) -> str:
    """``config.json`` as a run writes it: the schema marker that makes the folder a run's, then the three sections."""
    return (
        json.dumps(
            {"format": RUN_CONFIG_FORMAT, "schema_version": RUN_CONFIG_SCHEMA, **cfg.to_dict()},
            indent=2,
            allow_nan=False,
        )
        + "\n"
    )


def read_run_config(run_dir: Path) -> dict[str, Any] | None:
    """The sections of ``run_dir/config.json`` if a run wrote it: with this tool's schema marker, or (versions that wrote
    none) exactly a model, data and train section with MobileNetV2's ``arch``, a data ``source`` and ``epochs``.
    None for anything else (missing, not JSON, someone else's file)."""
    path = run_dir / RUN_CONFIG_FILE
    try:
        if path.stat().st_size > _RUN_CONFIG_MAX_BYTES:
            return None
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, unreadable, not UTF-8 or not JSON
        return None
    if not isinstance(values, dict):
        return None
    if (
        values.get("format") == RUN_CONFIG_FORMAT
    ):  # a later schema version is a run's too (read by from_dict, or refused)
        return {k: v for k, v in values.items() if k not in ("format", "schema_version")}
    sections = [values.get(k) for k in ("model", "data", "train")]
    if set(values) != {"model", "data", "train"} or not all(isinstance(v, dict) for v in sections):
        return None
    model, data, train = sections
    return values if model.get("arch") == "mobilenet_v2" and "source" in data and "epochs" in train else None


def saved_results(run_dir: Path) -> list[str]:
    """The outputs a run writes from its first checkpoint on (all but config.json) that ``run_dir`` holds."""
    found = [name for name in RUN_OUTPUTS if name != RUN_CONFIG_FILE and (run_dir / name).exists()]
    return found + [f"{VISUALIZE_DIR}/{name}" for name in VISUALIZE_FILES if (run_dir / VISUALIZE_DIR / name).exists()]


def remove_run_outputs(run_dir: Path) -> None:
    """Remove the files a run (and ``mnv2 visualize`` into its folder) wrote, by name; every other file stays, and so
    does config.json, which the new run replaces next (atomically): the folder is provably a run's at every moment,
    so a kill in between leaves one that --overwrite, --resume or a new run still accepts."""
    remove_outputs(run_dir, tuple(name for name in RUN_OUTPUTS if name != RUN_CONFIG_FILE))
    pictures = run_dir / VISUALIZE_DIR
    if pictures.is_dir():
        remove_outputs(pictures, VISUALIZE_FILES)
        with contextlib.suppress(OSError):  # still holding someone's files: kept
            pictures.rmdir()


def _partial_write(name: str) -> bool:
    """A temporary file that a killed run left beside one of its outputs (fileio.atomic_path's ``.<name>.*.tmp``)."""
    return name.endswith(".tmp") and any(name.startswith(f".{output}.") for output in RUN_OUTPUTS)


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


PATH_SETTINGS = (
    "source",
    "data_dir",
    "class_index",
    "init_from",
)  # recorded as absolute paths (RunConfig.with_absolute_paths)


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
        what = "; ".join(
            part
            for part in (f"gone: {', '.join(gone)}" if gone else "", f"new: {', '.join(new)}" if new else "")
            if part
        )
        raise DataError(
            f"the classes changed since the run started ({what or 'the same names in another order'})",
            path=source,
            hint=hint,
        )
    trained_on = (resume_from.train_summary.get("data") or {}).get("train_images")
    if trained_on is not None and int(trained_on) != len(data.train):
        raise DataError(
            f"the training set changed since the run started ({trained_on} images, now {len(data.train)}): "
            "its learning-rate schedule and data order count the images",
            path=source,
            hint=hint,
        )
    fingerprint = resume_from.provenance.get("data_fingerprint")
    if fingerprint and fingerprint != data.fingerprint:
        log.warning(
            "the data changed since the run started (the same classes and image count, but a file's name or size differs): resuming on it"
        )
