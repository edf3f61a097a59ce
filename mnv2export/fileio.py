"""Atomic writes and file hashes: a file with a final name is always whole."""

from __future__ import annotations

import codecs
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import numbers
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import ArtifactError, CheckpointError, ConfigError, DataError, Mnv2Error, OutputError
from .layout import BEST_FILE, LAST_FILE

log = logging.getLogger(__name__)


def remove_outputs(folder: Path, files: tuple[str, ...], folders: tuple[str, ...] = ()) -> None:
    """Remove a command's own earlier outputs (these names only) from ``folder``; every other file stays."""
    for name in files:
        (folder / name).unlink(missing_ok=True)
    for name in folders:
        shutil.rmtree(folder / name, ignore_errors=True)


def ensure_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents); a clear error when that is impossible or it is not writable."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError("output path exists and is not a folder", path=p, hint="choose another {out}") from None
    except OSError as exc:
        raise OutputError(
            f"cannot create output folder ({exc.strerror})", path=p, hint="choose a writable {out}"
        ) from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise OutputError("output folder is not writable", path=p, hint="fix its permissions or choose another {out}")
    return p


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success it is renamed to ``final`` (atomic on POSIX).

    On any error (or interruption) the temporary file is removed and ``final`` is untouched, so a reader never sees a
    half-written file under the final name, and two writers of the same name leave one whole file (the later one).
    """
    final = Path(final)
    ensure_dir(final.parent)
    tmp: Path | None = None
    try:
        tmp = _temp_beside(final)
        yield tmp
        _fsync(tmp)
        os.replace(tmp, final)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise output_error(exc, final) from None
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_files(
    folder: str | Path, owned: Iterable[str] = (), temp_dir: Path | None = None
) -> Iterator[Callable[[str], Path]]:
    """Write several files into ``folder`` as one change: ``stage(name)`` gives a temporary path for each; when the
    block ends without error they are renamed to their final names, in the order staged, while holding an exclusive
    lock on the folder itself, and then every name of ``owned`` that was not staged this time is removed (under the
    same lock), so that no file of an earlier writer's set outlives it. Two writers of the same folder therefore
    never leave a mix: each one's renames happen together, and the later one wins whole. Files of other names stay.
    On error or interruption every temporary file is removed and no final name is touched. ``temp_dir`` (a folder on
    the same file system, e.g. a :func:`work_folder` inside ``folder``) holds the temporary files instead of ``folder``.
    """
    folder = ensure_dir(folder)
    staged: list[tuple[Path, Path]] = []

    def stage(name: str) -> Path:
        final = folder / name
        try:
            tmp = _temp_beside(final if temp_dir is None else Path(temp_dir) / name)
        except OSError as exc:
            raise output_error(exc, final) from None
        staged.append((tmp, final))
        return tmp

    try:
        try:
            yield stage
        except (
            OSError
        ) as exc:  # while a file was written (each is staged just before it is written): that file is named
            raise output_error(exc, staged[-1][1] if staged else folder) from None
        try:
            for tmp, _ in staged:
                _fsync(tmp)
            lock = os.open(folder, os.O_RDONLY)  # flock on the folder itself: no lock file left behind
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                for tmp, final in staged:
                    os.replace(tmp, final)
                written = {final.name for _, final in staged}
                for name in owned:
                    if name not in written and (folder / name).exists():
                        (folder / name).unlink()
                        log.info(
                            "removed %s: an earlier write of %s left it, this one did not write it",
                            folder / name,
                            folder,
                        )
            finally:
                os.close(lock)  # releases the lock
        except OSError as exc:
            raise output_error(exc, folder) from None
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def folder_lock(folder: str | Path, busy: str, hint: str, wait: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (flock on the folder itself, so no lock file is left behind) for the
    block; a folder another process still holds after ``wait`` seconds raises ``ConfigError(busy)``.

    The lock belongs to the open folder, which forked children (DataLoader workers) share: after the holder is killed
    it lasts until they notice and exit (PyTorch's workers check every 5 s), hence ``wait``."""
    fd = os.open(folder, os.O_RDONLY)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ConfigError(busy, path=Path(folder), hint=hint) from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)  # releases the lock


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def output_error(exc: OSError, path: Path) -> OutputError:
    """An :class:`OutputError` a person can act on, naming ``path``, for any reason a write fails."""
    if exc.errno in DISK_FULL_ERRNOS:
        return OutputError(
            "disk full while writing", path=path, hint="free some space and run again; earlier files are intact"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"cannot write output file ({exc.strerror})", path=path, hint="choose a writable {out}")
    return OutputError(
        f"cannot write output file ({exc.strerror or type(exc).__name__})", path=path, hint="choose another output path"
    )


def is_disk_full(exc: BaseException, folder: str | Path | None = None, need: int = 0) -> bool:
    """Whether ``exc`` comes from a full disk: an OSError of ENOSPC, EDQUOT or EFBIG anywhere in its chain (libraries
    wrap it in their own types), or, with ``folder``, fewer than ``need`` bytes left on ``folder``'s file system when it
    was raised. The second is for C++ writers (onnx's ``infer_shapes_path``, ONNX Runtime's optimised-model file) that
    cut a file short without an error: what fails is the next reader ("Wire format was corrupt"), not the write."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
    if folder is None:
        return False
    try:
        return shutil.disk_usage(folder).free < need
    except OSError:
        return False


def write_bytes(path: str | Path, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` and check that the file holds all of it: a file whose size is not what was written is
    an ``OSError(ENOSPC)`` (as a full disk raises it, so :func:`output_error` says "disk full"), never a file to read."""
    p = Path(path)
    _write_all(p, data)
    size = p.stat().st_size
    if size != len(data):
        raise OSError(errno.ENOSPC, f"the file holds {size:,} of the {len(data):,} bytes written (cut short)", str(p))
    return p


def _write_all(path: Path, data: bytes | memoryview) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())  # a delayed allocation failure (a full disk) shows here, not after the rename


def json_text(obj: Any, indent: int | None = 2, default: Callable[[Any], Any] | None = None) -> str:
    """Strict JSON of ``obj`` for a file or a person: a non-finite number (NaN, infinity) becomes ``null`` (bare
    ``NaN`` is not JSON, and strict parsers refuse it); NumPy scalars become numbers. Every JSON the tool writes goes
    through here."""
    return json.dumps(finite_json(obj), indent=indent, allow_nan=False, default=default)


def finite_json(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None, tuples as lists, NumPy numbers as Python numbers."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k if isinstance(k, str) else str(k): finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------- a command's temporary files
WORK_PREFIX = ".mnv2-work."  # a work folder inside an output folder: every temporary file of one export


@contextlib.contextmanager
def work_folder(folder: Path, legacy: Iterable[str] = ()) -> Iterator[Path]:
    """A private hidden folder inside ``folder`` for one command's temporary files, removed when the block ends.

    Its owner holds an exclusive flock on it while it lives; the kernel drops that lock when the owner dies, also of
    SIGKILL. Each new one first removes the work folders of ``folder`` whose lock it can take (their owner is gone),
    and the names matching the glob patterns ``legacy`` (temporaries of earlier versions), all under ``folder``'s own
    lock, under which work folders are also created and locked: a live owner never loses its folder."""
    try:
        with _folder_locked(folder):
            _remove_stale(folder, legacy)
            work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}.", dir=folder))
            fd = os.open(work, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new, so free
    except OSError as exc:
        raise output_error(exc, folder) from None
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.close(fd)


@contextlib.contextmanager
def _folder_locked(folder: Path) -> Iterator[None]:
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a short hold: another writer's commit or its own clean-up
        yield
    finally:
        os.close(fd)


def _remove_stale(folder: Path, legacy: Iterable[str]) -> None:
    stale = [p for pattern in legacy for p in folder.glob(pattern)]
    for work in folder.glob(f"{WORK_PREFIX}*"):
        try:
            fd = os.open(work, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            stale.append(work)  # nobody holds it: its owner was killed
        except BlockingIOError:
            pass  # a live command's
        finally:
            os.close(fd)
    for p in stale:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        log.info("removed %s, left by a command that was killed", p)


@contextlib.contextmanager
def temp_files_in(folder: Path) -> Iterator[None]:
    """Inside: Python's ``tempfile`` (and so the libraries that use it, e.g. ``onnxruntime.quantization``) puts its
    temporary files in ``folder``, not in the system's temporary directory where a killed process would leave them."""
    saved = tempfile.tempdir
    tempfile.tempdir = str(Path(folder).resolve())  # absolute: a compiler AOTInductor starts runs in another folder
    try:
        yield
    finally:
        tempfile.tempdir = saved


def check_output_file(path: str | Path, option: str) -> Path:
    """Check, before any work, that ``path`` can be written as a file (what ``option``, e.g. ``--json``, names): a
    folder is a :class:`ConfigError`; a folder that cannot hold a new file is an :class:`OutputError`. Nothing is
    created, except a temporary probe file, removed at once, where the parent folder exists."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{option} names a folder, not a file", path=p, hint=f"give {option} a file path")
    parent = p.parent
    while (
        not parent.exists() and parent != parent.parent
    ):  # missing folders are created at write time: ask the nearest one there
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(
            f"{option} lies under {parent}, which is a file, not a folder", path=p, hint=f"choose another {option} path"
        )
    try:
        _temp_beside(parent / p.name).unlink()
    except OSError as exc:
        raise OutputError(
            f"{option} cannot be written ({exc.strerror or type(exc).__name__})",
            path=p,
            hint=f"choose another {option} path",
        ) from None
    return p


def _temp_beside(final: Path) -> Path:
    """An empty hidden temporary file in ``final``'s folder, with the permissions a new file there would get."""
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        os.chmod(name, 0o666 & ~_umask())  # mkstemp makes 0600
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        write_bytes(tmp, text.encode("utf-8"))
    return Path(path)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def text_kind(path: str | Path) -> str | None:
    """``"a JSON file"`` or ``"a text file"`` when ``path`` holds text rather than a binary model (a manifest,
    config.json, a recipe passed where a model belongs), else None. Reads the first 4 KiB."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head)  # a character cut at 4 KiB is not an error
    except UnicodeDecodeError:
        return None
    if not text or any(c in text for c in "\x00\x01\x02\x03\x04\x05\x06\x07\x08"):
        return None
    return "a JSON file" if text.lstrip()[:1] in ("{", "[") else "a text file"


def require_file(path: str | Path, what: str, hint: str, error: type[Mnv2Error]) -> Path:
    """``path`` as a Path if it names a non-empty file, else ``error`` saying ``<what> not found``, ``<what> path is a
    folder, not a file`` or ``<what> file is empty``, with ``hint``. The checks every loader of a model file makes first;
    light, so that a command can make them before it imports torch or ONNX Runtime."""
    p = Path(path)
    if not p.exists():
        raise error(f"{what} not found", path=p, hint=hint)
    if p.is_dir():
        raise error(f"{what} path is a folder, not a file", path=p, hint=hint)
    if p.stat().st_size == 0:
        raise error(f"{what} file is empty", path=p, hint=hint)
    return p


CHECKPOINT_HINT = "pass a best.pt or last.pt written by `mnv2 train`"
ARTIFACT_HINT = "pass a checkpoint (best.pt) or a file written by `mnv2 export`"


def require_data_folder(path: str | Path) -> Path:
    """A data source that is not a built-in name: it must be an existing folder (a :class:`DataError` otherwise).
    Torch-free, so that ``mnv2 train`` can say so before its heavy imports."""
    root = Path(path)
    if not root.exists():
        raise DataError(
            "data folder not found", path=root, hint="pass {data} synth, {data} fashion-mnist or an ImageFolder folder"
        )
    if not root.is_dir():
        raise DataError(
            "data path is a file, not a folder", path=root, hint="pass the folder that holds train/ and val/"
        )
    return root


INIT_WEIGHTS_HINT = "pass a torchvision MobileNetV2 state dict (.pth)"


def require_init_weights(path: str | Path) -> Path:
    """``--init-from``'s file checks (not found, a folder, empty), torch-free; the loader reads it later."""
    return require_file(path, "initial weights", INIT_WEIGHTS_HINT, CheckpointError)


def require_checkpoint_file(path: str | Path) -> Path:
    """The file checks of :func:`mnv2export.checkpoint.load_checkpoint`, without importing torch."""
    return require_file(path, "checkpoint", checkpoint_hint(path), CheckpointError)


def checkpoint_hint(path: str | Path) -> str:
    """:data:`CHECKPOINT_HINT`, naming the files for a run folder (``weights/<run>``) passed where a checkpoint goes."""
    p = Path(path)
    if p.is_dir() and (p / BEST_FILE).is_file():
        return f"pass a checkpoint of that run: {p / BEST_FILE} (its best epoch) or {p / LAST_FILE}"
    return CHECKPOINT_HINT


def require_artifact_file(path: str | Path) -> Path:
    """The file checks of :func:`mnv2export.filekind.detect_format`, without importing torch or ONNX Runtime."""
    return require_file(path, "artifact", ARTIFACT_HINT, ArtifactError)
