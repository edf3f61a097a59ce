"""Fashion-MNIST through torchvision's own reader (``torchvision.datasets.FashionMNIST``).

The IDX files come from ``--data-dir`` (a folder holding them, gzipped or not, or torchvision's
``FashionMNIST/raw`` layout), else from Debian's ``dataset-fashion-mnist`` package, else torchvision downloads them
(where there is internet). Gzipped files are extracted once into torchvision's layout under the cache folder.
Validation is the official 10,000-image test split.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path

from torch.utils.data import Dataset

from .. import errors, fileio
from ..errors import DataError

log = logging.getLogger(__name__)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MEAN, STD = 0.2860, 0.3530


def cache_root() -> Path:
    return Path(os.environ.get("MNV2_CACHE", Path.home() / ".cache" / "mnv2export"))


def _find_files(folder: Path) -> dict[str, Path] | None:
    """name -> file (plain or .gz) when ``folder`` (or its FashionMNIST/raw) holds all four IDX files."""
    for candidate in (folder, folder / "FashionMNIST" / "raw", folder / "raw"):
        found = {}
        for name in FILES:
            for path in (candidate / name, candidate / f"{name}.gz"):
                if path.is_file():
                    found[name] = path
                    break
        if len(found) == len(FILES):
            return found
    return None


def _gzip_size(path: Path) -> int:
    """The uncompressed size a gzip file records in its last four bytes (ISIZE, modulo 2**32)."""
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        return int.from_bytes(fh.read(4), "little")


def _gunzip(path: Path, out: Path) -> None:
    with gzip.open(path, "rb") as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


@contextlib.contextmanager
def _archive_errors(path: Path) -> Iterator[None]:
    """A damaged or unreadable archive is the data's fault (DataError), not the cache's."""
    try:
        yield
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"Fashion-MNIST archive cannot be read ({errors.first_line(exc)})",
            path=path,
            hint="replace the file (reinstall dataset-fashion-mnist, or fetch the IDX files again)",
        ) from None


def _torchvision_root(files: dict[str, Path]) -> Path:
    """A root in torchvision's layout (``<root>/FashionMNIST/raw/<uncompressed IDX>``) for these files.

    Each file is extracted (or linked) under a temporary name and renamed into place, so runs started together on a
    new machine each leave a whole file, and a cached file whose size is not the one its archive records (an
    extraction killed midway by an older version) is extracted again."""
    first = next(iter(files.values()))
    if (
        all(p.suffix != ".gz" for p in files.values())
        and first.parent.name == "raw"
        and first.parent.parent.name == "FashionMNIST"
    ):
        return first.parent.parent.parent
    digest = hashlib.sha256(str(first.parent.resolve()).encode()).hexdigest()[:12]
    root = cache_root() / f"fashion-mnist-{digest}"
    raw = fileio.ensure_dir(root / "FashionMNIST" / "raw")
    for name, path in files.items():
        target = raw / name
        if path.suffix == ".gz":
            with _archive_errors(path):
                size = _gzip_size(path)
            if target.is_file() and not target.is_symlink() and target.stat().st_size == size:
                continue
            if target.exists() or target.is_symlink():
                log.warning("%s is not the %d bytes its archive holds: extracting it again", target, size)
            with fileio.atomic_path(target) as tmp, _archive_errors(path):
                _gunzip(path, tmp)
        elif not (target.is_symlink() and target.resolve() == path.resolve()):
            link = raw / f".{name}.{os.getpid()}.link"  # renamed into place: another run may be linking it too
            link.unlink(missing_ok=True)
            link.symlink_to(path.resolve())
            os.replace(link, target)
    return root


def fashion_mnist(data_dir: str | None, train_transform, val_transform) -> tuple[Dataset, Dataset, str]:
    """(train, val, fingerprint)."""
    from torchvision.datasets import FashionMNIST

    searched = [Path(data_dir)] if data_dir else [DEBIAN_DIR]
    if data_dir and not Path(data_dir).is_dir():
        raise DataError("Fashion-MNIST folder not found", path=data_dir, hint="pass {data_dir} with the four IDX files")
    files = next((f for f in (_find_files(p) for p in searched) if f), None)
    if files is None:
        if data_dir:
            raise DataError(
                "Fashion-MNIST IDX files not found",
                path=data_dir,
                hint=f"the folder must hold {', '.join(FILES)} (or their .gz)",
            )
        root = cache_root() / "fashion-mnist-download"
        try:
            train = FashionMNIST(str(root), train=True, download=True, transform=train_transform)
            val = FashionMNIST(str(root), train=False, download=True, transform=val_transform)
        except Exception as exc:  # noqa: BLE001 - urllib / http errors of every kind
            raise DataError(
                f"Fashion-MNIST is not on this machine and could not be downloaded ({type(exc).__name__})",
                hint="`apt-get install dataset-fashion-mnist`, or pass {data_dir} with the IDX files",
            ) from None
        files = {name: Path(root) / "FashionMNIST" / "raw" / name for name in FILES}
    else:
        root = _torchvision_root(files)
        try:
            train = FashionMNIST(str(root), train=True, download=False, transform=train_transform)
            val = FashionMNIST(str(root), train=False, download=False, transform=val_transform)
        except (ValueError, RuntimeError, AssertionError, OSError) as exc:  # torchvision's IDX reader on a damaged file
            raise DataError(
                f"Fashion-MNIST IDX files cannot be read ({type(exc).__name__}: {errors.first_line(exc)})",
                path=next(iter(files.values())).parent,
                hint="replace the damaged IDX file(s)",
            ) from None
    h = hashlib.sha256()
    for name in FILES:
        h.update(f"{name}\0{files[name].stat().st_size}\n".encode())
    return train, val, h.hexdigest()
