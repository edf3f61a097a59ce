"""ImageFolder data (``<root>/train/<class>/*``, ``<root>/val/<class>/*``, or ``<root>/<class>/*`` split by
``val_split``) that never crashes mid-epoch.

The layout is checked up front (missing folder, no images, an empty class, train and val naming different classes);
an image that cannot be decoded is skipped when it is met: the batch goes on without it, the path is named once in a
warning and counted (see :class:`SkipTracker`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

from torch.utils.data import Dataset

from ..errors import DataError
from ..images import ImageReadError, list_files, open_rgb, warn_not_images

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


def require_image_folder(root: Path, what: str, hint: str) -> None:
    """A :class:`DataError` naming ``what`` unless ``root`` is an existing folder."""
    if not root.exists():
        raise DataError(f"{what} not found", path=root, hint=hint)
    if not root.is_dir():
        raise DataError(f"{what} is a file, not a folder of images", path=root, hint=hint)


def has_splits(root: Path) -> bool:
    """Whether ``root`` holds a ``train/`` or ``val/`` folder (the split layout), rather than the class folders."""
    return any((root / split).is_dir() for split in SPLITS)


def scan_split(root: Path, split: str, others: list[Path] | None = None) -> tuple[list[str], list[tuple[str, int]]]:
    """Class folder names (sorted) and (path, class index) samples of one split, validated; ``others``: see
    :func:`scan_classes`."""
    folder = root / split
    if not folder.is_dir():
        raise DataError(
            f"no '{split}' folder in the data folder",
            path=root,
            hint="use the ImageFolder layout <root>/train/<class>/*.jpg and <root>/val/<class>/*.jpg"
            + ("" if has_splits(root) else ", or hold out part of each class folder with {val_split} 0.1"),
        )
    return scan_classes(folder, f"{split}/", others)


def scan_classes(folder: Path, where: str, others: list[Path] | None = None) -> tuple[list[str], list[tuple[str, int]]]:
    """Class folder names (sorted) and (path, class index) samples of ``folder``'s class sub-folders, validated;
    ``where`` names the folder in the errors (``train/``, ``the data folder``). The files left out for their extension
    are added to ``others`` (the caller warns once for several folders), or named in a warning here when it is None."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"no class folders in {where}", path=folder, hint="put each class's images in its own sub-folder"
        )
    samples: list[tuple[str, int]] = []
    empty, left_out = [], []
    for index, name in enumerate(classes):
        files, not_images = list_files(folder / name)
        if not files:
            empty.append(name)
        samples += [(str(f), index) for f in files]
        left_out += not_images
    if others is None:
        warn_not_images(left_out, folder)
    else:
        others += left_out
    if empty:
        exts = sorted(
            {p.suffix.lower() or "(no extension)" for p in left_out if p.relative_to(folder).parts[0] in empty}
        )
        unread = f" (they hold only files this tool does not read as images: {', '.join(exts)})" if exts else ""
        if len(empty) == len(classes):
            raise DataError(
                f"no images in {where}{unread}", path=folder, hint="add .jpg/.png images under each class folder"
            )
        raise DataError(
            f"class folder(s) with no images in {where}: {', '.join(empty)}{unread}",
            path=folder,
            hint="add images to them or remove them",
        )
    return classes, samples


def split_classes(
    root: Path,
    val_split: float,
    others: list[Path] | None = None,
) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]]]:
    """A folder of class folders (``<root>/<class>/*.jpg``, no ``train/`` or ``val/``) split into train and val: class
    names and the (path, class index) samples of each split.

    About ``val_split`` of each class's images go to val, chosen by a hash of each file's path relative to ``root``
    (as TensorFlow's and Keras' hash-bucket splits do): the same on every machine and every run, and an image added
    later never moves another between the splits. Each class keeps at least one image on each side. ``others``: see
    :func:`scan_classes`."""
    if has_splits(root):
        raise DataError(
            f"val_split = {val_split:g} is for a folder of class folders, but this one holds train/ and val/",
            path=root,
            hint="leave {val_split} out: its val/ folder is the validation split",
        )
    classes, samples = scan_classes(root, "the data folder", others)
    by_class: dict[int, list[tuple[float, str]]] = {}
    for path, label in samples:
        digest = hashlib.sha256(Path(path).relative_to(root).as_posix().encode()).digest()
        by_class.setdefault(label, []).append((int.from_bytes(digest[:8], "big") / 2**64, path))
    train: list[tuple[str, int]] = []
    val: list[tuple[str, int]] = []
    few = [classes[label] for label, files in sorted(by_class.items()) if len(files) < 2]
    if few:
        raise DataError(
            f"class folder(s) with a single image cannot be split into train and val: {', '.join(few)}",
            path=root,
            hint="add images to them, or use the layout <root>/train/<class>/ and <root>/val/<class>/",
        )
    for label, files in sorted(by_class.items()):
        files.sort()  # by hash: the held-out ones first
        n_val = min(max(1, sum(h < val_split for h, _ in files)), len(files) - 1)
        val += [(path, label) for _, path in files[:n_val]]
        train += [(path, label) for _, path in files[n_val:]]
    return classes, sorted(train), sorted(val)


def own_split(root: Path, source: str, val_split: float, split: str) -> list[tuple[str, int]] | None:
    """The (path, class index) samples of ``split`` (train or val) when ``root`` is the folder of class folders a run
    split by ``val_split`` (its data config's ``source``): the images that run trained or validated on, for the
    check's real images and the INT8 calibration. None for any other folder, which is read as it is."""
    if not val_split or has_splits(root) or Path(source).resolve() != root.resolve():
        return None
    _, train, val = split_classes(root, val_split)
    return train if split == "train" else val


def check_same_classes(train: list[str], val: list[str], root: Path) -> None:
    if train != val:
        only_train = sorted(set(train) - set(val))
        only_val = sorted(set(val) - set(train))
        parts = []
        if only_train:
            parts.append(f"only in train: {', '.join(only_train)}")
        if only_val:
            parts.append(f"only in val: {', '.join(only_val)}")
        raise DataError(
            f"train and val have different classes ({'; '.join(parts)})",
            path=root,
            hint="give both splits the same class folders",
        )


def read_class_index(path: str | Path, folders: list[str]) -> list[str]:
    """Human class names for folder names (wnids) from a JSON such as ``imagenet_class_index.json``.

    Accepts ``{"0": ["n01440764", "tench"], ...}`` and ``{"n01440764": "tench", ...}``. A folder the file does not
    name keeps its folder name (with a warning); a file that names none of the folders is a :class:`DataError`.
    """
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            "class-index file not found", path=p, hint="pass a JSON such as imagenet_class_index.json"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError) as exc:
        raise DataError(
            f"class-index file is not valid JSON ({exc})", path=p, hint="pass a JSON such as imagenet_class_index.json"
        ) from None
    names: dict[str, str] = {}
    if isinstance(raw, dict):
        for key, value in raw.items():
            if isinstance(value, list) and len(value) == 2:
                names[str(value[0])] = str(value[1])
            elif isinstance(value, str):
                names[str(key)] = value
    if not names:
        raise DataError(
            "class-index file maps no folder name to a class name",
            path=p,
            hint='use {"0": ["n01440764", "tench"]} or {"n01440764": "tench"}',
        )
    unknown = [f for f in folders if f not in names]
    if folders and len(unknown) == len(folders):  # another data set's index: every class would keep its folder name
        raise DataError(
            f"class-index file names none of the {len(folders)} class folders (folders: {_some(folders)}; "
            f"the file names: {_some(sorted(names))})",
            path=p,
            hint="pass the class index of this data set (its keys are the folder names), or leave {class_index} out",
        )
    if unknown:
        log.warning(
            "class index %s does not name %d folder(s) (e.g. %s); their folder names are kept",
            p,
            len(unknown),
            unknown[0],
        )
    result = [names.get(f, f) for f in folders]
    counts = Counter(result)
    clashing = [
        i for i, name in enumerate(result) if counts[name] > 1
    ]  # ImageNet's own index names two classes "crane"
    for i in clashing:
        result[i] = f"{result[i]} ({folders[i]})"
    if clashing:
        log.warning(
            "class index %s gives several folders the same name: those are told apart by their folder (%s)",
            p,
            ", ".join(result[i] for i in clashing),
        )
    return result


def _some(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def fingerprint(samples: list[tuple[str, int]], root: Path) -> str:
    """sha256 over (relative path, size, label) of every sample: changes when the data changes, cheap to compute."""
    h = hashlib.sha256()
    for path, label in samples:
        p = Path(path)
        h.update(f"{p.relative_to(root)}\0{p.stat().st_size}\0{label}\n".encode())
    return h.hexdigest()


class FolderDataset(Dataset):
    """Samples from :func:`scan_split`; an unreadable image yields ``None`` (the collate function drops it)."""

    def __init__(
        self, samples: list[tuple[str, int]], classes: list[str], transform=None, *, exif_orientation: bool = False
    ):
        self.samples, self.classes, self.transform = samples, classes, transform
        self.exif_orientation = exif_orientation  # see DataConfig.exif_orientation
        self.targets = [label for _, label in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, index: int):
        return open_rgb(self.samples[index][0], exif_orientation=self.exif_orientation)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            img = open_rgb(path, exif_orientation=self.exif_orientation)
        except ImageReadError as exc:
            return SkippedImage(exc.path, exc.reason), label
        return (self.transform(img) if self.transform else img), label


class SkippedImage:
    """Stands in for an image that could not be decoded; dropped by :func:`mnv2export.data.collate`."""

    __slots__ = ("path", "reason")

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
