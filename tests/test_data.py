import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_fashion_idx
from PIL import Image

from mnv2export.config import DataConfig
from mnv2export.data import SkipTracker, build_datasets, collate, load_images
from mnv2export.data.synth import SynthDataset, write_synth
from mnv2export.errors import DataError
from mnv2export.images import ImageReadError, open_rgb


def _folder(root, classes=("cat", "dog"), n=3, size=40, splits=("train", "val")):
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def _cfg(source, **kw):
    return DataConfig(source=str(source), img_size=32, **kw)


def test_synth_is_deterministic_and_splits_differ():
    a = SynthDataset(5, 4, 32, "train", seed=0)
    b = SynthDataset(5, 4, 32, "train", seed=0)
    v = SynthDataset(5, 4, 32, "val", seed=0)
    assert np.array_equal(np.asarray(a.image(7)), np.asarray(b.image(7)))
    assert not np.array_equal(np.asarray(a.image(7)), np.asarray(v.image(7)))
    assert len(set(a.classes)) == 5 and a.targets[:5] == [0, 0, 0, 0, 1]
    assert a.image(0).mode == "RGB" and a.image(0).size == (32, 32)


def test_synth_classes_are_separable_by_colour():
    """A nearest-centroid classifier on mean colour already beats chance by far: the set is learnable."""
    ds = SynthDataset(8, 20, 32, "train")
    feats = np.stack([np.asarray(ds.image(i), dtype=np.float32).reshape(-1, 3).max(0) for i in range(len(ds))])
    labels = np.array(ds.targets)
    cents = np.stack([feats[labels == k].mean(0) for k in range(8)])
    pred = np.argmin(((feats[:, None] - cents[None]) ** 2).sum(-1), axis=1)
    assert (pred == labels).mean() > 0.4  # chance is 0.125


def test_write_synth_is_an_imagefolder(tmp_path):
    counts = write_synth(tmp_path / "s", num_classes=3, per_class=4, size=24, val_per_class=2)
    assert counts == {"train": 12, "val": 6}
    bundle = build_datasets(_cfg(tmp_path / "s"))
    assert len(bundle.class_names) == 3 and len(bundle.train) == 12 and len(bundle.val) == 6
    x, y = bundle.val[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32


def test_a_class_index_naming_two_classes_alike_keeps_them_apart(tmp_path, caplog):
    """ImageNet's own index names n02012849 and n03126707 both "crane" (a bird, a machine): the checkpoint, the
    confusion matrix and `mnv2 predict` could not tell them apart. They are named with their folder too."""
    import logging

    from mnv2export.data.folder import read_class_index

    (tmp_path / "idx.json").write_text(
        json.dumps({"0": ["n02012849", "crane"], "1": ["n03126707", "crane"], "2": ["n01440764", "tench"]})
    )
    with caplog.at_level(logging.WARNING, logger="mnv2export"):
        names = read_class_index(tmp_path / "idx.json", ["n01440764", "n02012849", "n03126707"])
    assert names == ["tench", "crane (n02012849)", "crane (n03126707)"]
    assert "crane (n02012849), crane (n03126707)" in caplog.text
    assert read_class_index(tmp_path / "idx.json", ["n01440764", "n02012849"]) == ["tench", "crane"]  # one crane: plain


def test_write_synth_refuses_a_folder_holding_files_and_bad_counts(tmp_path):
    """A second `mnv2 data synth` into the same folder left the first set's images beside its own (a 2-class set
    trained as 3 classes); `--val-per-class 0` silently became the default; `--seed -1` crashed numpy."""
    from mnv2export.errors import ConfigError, OutputError

    write_synth(tmp_path / "s", num_classes=3, per_class=2, size=24, val_per_class=1)
    with pytest.raises(OutputError, match="output folder already holds files"):
        write_synth(tmp_path / "s", num_classes=2, per_class=2, size=24)
    assert sorted(p.name for p in (tmp_path / "s" / "train").iterdir()) == [
        "00-circle-solid",
        "01-square-solid",
        "02-triangle-solid",
    ]
    (tmp_path / "empty").mkdir()
    assert write_synth(tmp_path / "empty", num_classes=2, per_class=3, size=24) == {
        "train": 6,
        "val": 2,
    }  # an empty folder is fine
    for kwargs, match in (
        ({"val_per_class": 0}, "synth_val_per_class = 0 is out of range"),
        ({"seed": -1}, "synth_seed = -1 is out of range"),
    ):
        with pytest.raises(ConfigError, match=match):
            write_synth(tmp_path / "t", num_classes=2, per_class=2, size=24, **kwargs)
        assert not (tmp_path / "t").exists()


def test_folder_preprocessing_and_class_index(tmp_path):
    root = _folder(tmp_path / "d", classes=("n01", "n02"))
    (tmp_path / "idx.json").write_text(json.dumps({"0": ["n01", "tench"], "1": ["n02", "goldfish"]}))
    bundle = build_datasets(_cfg(root, class_index=str(tmp_path / "idx.json")))
    assert bundle.class_names == ["tench", "goldfish"]
    x, _ = bundle.train[0]
    assert x.shape == (3, 32, 32)
    # the fingerprint changes when the data does
    fp = bundle.fingerprint
    Image.new("RGB", (40, 40)).save(root / "train" / "n01" / "extra.png")
    assert build_datasets(_cfg(root)).fingerprint != fp


@pytest.mark.parametrize(
    "setup, match",
    [
        (lambda r: None, "not found"),
        (lambda r: r.mkdir(), "no 'train' folder"),
        (lambda r: (r / "train").mkdir(parents=True), "no class folders"),
        (lambda r: [(r / s / "a").mkdir(parents=True) for s in ("train", "val")], "no images in train"),
        (
            lambda r: (_folder(r, ("a", "b")), [p.unlink() for p in (r / "train" / "b").iterdir()]),
            "with no images in train/: b",
        ),
        (
            lambda r: (_folder(r, ("a", "b"), splits=("train",)), _folder(r, ("a", "c"), splits=("val",))),
            "only in train: b; only in val: c",
        ),
        (lambda r: _folder(r, ("a", "b"), splits=("train",)), "no 'val' folder"),
        (lambda r: r.write_text("x"), "is a file"),
    ],
)
def test_bad_folders_are_data_errors(tmp_path, setup, match):
    root = tmp_path / "d"
    setup(root)
    with pytest.raises(DataError, match=match) as info:
        build_datasets(_cfg(root))
    assert info.value.hint


def test_unreadable_images_are_skipped_named_once_and_counted(tmp_path, caplog):
    root = _folder(tmp_path / "d", n=4)
    (root / "train" / "cat" / "empty.png").write_bytes(b"")
    good = (root / "train" / "dog" / "0.png").read_bytes()
    (root / "train" / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "train" / "dog" / "text.jpg").write_text("not an image")
    bundle = build_datasets(_cfg(root))
    loader = torch.utils.data.DataLoader(bundle.train, batch_size=4, collate_fn=collate)
    skips = SkipTracker()
    seen = 0
    with caplog.at_level(logging.WARNING, logger="mnv2export"):
        for _ in range(2):  # two epochs: each bad file is named once only
            for x, y, skipped in loader:
                skips.add(skipped)
                seen += len(y)
                assert x.shape[0] == y.shape[0]
    assert skips.count == 3 and seen == 2 * 8
    warned = [r.getMessage() for r in caplog.records if "skipped unreadable image" in r.getMessage()]
    assert len(warned) == 3 and any("truncated.png" in w for w in warned)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "I", "F", "1"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    arr = np.linspace(0, 1, 30 * 20).reshape(20, 30)
    if mode in ("I;16", "I"):
        img = Image.fromarray((arr * 65535).astype(np.uint16 if mode == "I;16" else np.int32))
        assert img.mode == mode
    elif mode == "F":
        img = Image.fromarray(arr.astype(np.float32))
    else:
        img = Image.fromarray((arr * 255).astype(np.uint8)).convert(mode)
    path = tmp_path / ("x.tif" if mode in ("I;16", "I", "F", "CMYK") else "x.png")
    img.save(path)
    rgb = open_rgb(path)
    assert rgb.mode == "RGB" and rgb.size == (30, 20)
    px = np.asarray(rgb)
    if mode not in ("1",):
        assert px[0, 0, 0] < 40 and px[-1, -1, 0] > 200  # the 16-bit / float range is scaled, not clipped


def test_image_errors_name_the_reason(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="identify"):
        open_rgb(tmp_path / "zero.png")
    with pytest.raises(ImageReadError, match="not found"):
        open_rgb(tmp_path / "missing.png")
    batch, kept, errors = load_images([tmp_path / "zero.png"], _cfg("synth"))
    assert batch.shape == (0, 3, 32, 32) and kept == [] and len(errors) == 1


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)  # the limit stays on; lowered so the file is small
    with pytest.raises(ImageReadError, match="decompression-bomb"):
        open_rgb(path)


def test_fashion_mnist_from_idx_files(tmp_path, monkeypatch):
    monkeypatch.setenv("MNV2_CACHE", str(tmp_path / "cache"))
    folder = write_fashion_idx(tmp_path / "fm")
    cfg = DataConfig(
        source="fashion-mnist",
        data_dir=str(folder),
        img_size=28,
        mean=[0.286] * 3,
        std=[0.353] * 3,
        train_aug="crop_pad",
        pad=2,
    )
    bundle = build_datasets(cfg)
    assert (len(bundle.train), len(bundle.val)) == (64, 32)
    assert bundle.class_names[0] == "T-shirt/top" and len(bundle.class_names) == 10
    x, y = bundle.val[3]
    assert x.shape == (3, 28, 28) and y == 3
    assert torch.equal(x[0], x[1])  # grayscale replicated to RGB
    with pytest.raises(DataError, match="IDX files not found"):
        build_datasets(cfg.replace(data_dir=str(tmp_path)))


def _fashion(tmp_path, monkeypatch, **kw):
    monkeypatch.setenv("MNV2_CACHE", str(tmp_path / "cache"))
    folder = write_fashion_idx(tmp_path / "fm")
    settings = {"img_size": 28, "mean": [0.286] * 3, "std": [0.353] * 3, "train_aug": "crop_pad", "pad": 2, **kw}
    return DataConfig(source="fashion-mnist", data_dir=str(folder), **settings)


def test_in_memory_batches_equal_the_per_sample_validation_transform(tmp_path, monkeypatch):
    cfg = _fashion(tmp_path, monkeypatch, mean=[0.2, 0.3, 0.4], std=[0.3, 0.35, 0.4])  # per-channel values on grayscale
    for augment in (False, True):
        bundle = build_datasets(cfg, augment=augment)
        assert bundle.val_memory is not None and not bundle.val_memory.augment
        idx = torch.tensor([5, 0, 31, 7])
        x, y = bundle.val_memory.batch(idx)
        ref_x, ref_y = collate([bundle.val[int(i)] for i in idx])[:2]
        assert x.dtype == torch.float32 and x.shape == (4, 3, 28, 28)
        assert torch.equal(x, ref_x) and torch.equal(y, ref_y)
    part = bundle.val_memory.subset([7, 2])  # the subset of the throughput benchmark
    assert torch.equal(part.batch(torch.arange(2))[0], bundle.val_memory.batch(torch.tensor([7, 2]))[0])
    train_eval = build_datasets(cfg, augment=False).train_memory  # calibration and checks: train split, no augmentation
    assert torch.equal(
        train_eval.batch(torch.arange(3))[0],
        collate([build_datasets(cfg, augment=False).train[i] for i in range(3)])[0],
    )


def test_in_memory_augmentation_is_a_padded_crop_and_flip_of_each_image(tmp_path, monkeypatch):
    cfg = _fashion(tmp_path, monkeypatch)
    bundle = build_datasets(cfg)
    mem = bundle.train_memory
    assert mem is not None and mem.augment and mem.pad == 2 and mem.hflip
    plain = build_datasets(cfg, augment=False).train_memory
    torch.manual_seed(0)
    idx = torch.arange(64).repeat(8)  # each image 8 times
    x, y = mem.batch(idx)
    ref = F.pad(plain.batch(torch.arange(64))[0], (2, 2, 2, 2), value=0.0)
    zero = (0.0 - 0.286) / 0.353  # a padded pixel, normalised
    ref = torch.where(
        F.pad(torch.zeros(64, 3, 28, 28), (2, 2, 2, 2), value=1.0).bool(), torch.full_like(ref, zero), ref
    )
    seen_offsets, flips = set(), 0
    for k, i in enumerate(idx.tolist()):
        matches = [
            (top, left, flip)
            for top in range(5)
            for left in range(5)
            for flip in (False, True)
            if torch.allclose(x[k], (lambda c: c.flip(-1) if flip else c)(ref[i, :, top : top + 28, left : left + 28]))
        ]
        assert matches, f"sample {k} is no crop or flip of image {i}"
        seen_offsets.add(matches[0][:2])
        flips += matches[0][2]
        assert y[k] == i % 10
    assert len(seen_offsets) == 25  # every offset of the 5 x 5 is drawn
    assert 0.35 < flips / len(idx) < 0.65


def test_in_memory_path_only_where_it_gives_the_same_tensors(tmp_path, monkeypatch):
    assert build_datasets(_fashion(tmp_path, monkeypatch)).train_memory is not None
    assert build_datasets(_fashion(tmp_path, monkeypatch, train_aug="none")).train_memory is not None
    resized = build_datasets(_fashion(tmp_path, monkeypatch, img_size=32))  # a resize is PIL's job
    assert resized.train_memory is None and resized.val_memory is None
    rrc = build_datasets(_fashion(tmp_path, monkeypatch, train_aug="rrc"))
    assert rrc.train_memory is None and rrc.val_memory is not None
    assert (
        build_datasets(
            DataConfig(source="synth", img_size=32, synth_train_per_class=2, synth_val_per_class=1)
        ).train_memory
        is None
    )


def _tree(root, layout: dict[str, list[str]], ext=".png"):
    for split, classes in layout.items():
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(2):
                Image.new("RGB", (36, 36), (40 * i, 80, 120)).save(d / f"{i}{ext}")
    return root


def test_val_with_an_extra_class_is_a_data_error(tmp_path):
    root = _tree(tmp_path / "d", {"train": ["a", "b"], "val": ["a", "b", "c"]})
    with pytest.raises(DataError, match=r"only in val: c\)"):
        build_datasets(DataConfig(source=str(root), img_size=32))


def test_hidden_folders_are_not_classes_and_upper_case_extensions_count(tmp_path):
    root = _tree(tmp_path / "d", {"train": ["a", "b"], "val": ["a", "b"]}, ext=".JPG")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    bundle = build_datasets(DataConfig(source=str(root), img_size=32))
    assert bundle.class_names == ["a", "b"] and len(bundle.train) == 4
    # nor are hidden files and folders inside a class folder its images (they were trained on)
    copy = next((root / "train" / "a").iterdir())
    (root / "train" / "a" / ".ipynb_checkpoints").mkdir()
    (root / "train" / "a" / ".ipynb_checkpoints" / copy.name).write_bytes(copy.read_bytes())
    (root / "train" / "a" / f"._{copy.name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS's resource fork
    assert len(build_datasets(DataConfig(source=str(root), img_size=32)).train) == 4


# --------------------------------------------------------------------------------------------------- in-memory data
def test_in_memory_training_batches_follow_hflip_and_train_aug(tmp_path, monkeypatch):
    from mnv2export.data import build_datasets, collate

    idx = torch.arange(64)
    for settings in ({"pad": 0, "hflip": False}, {"train_aug": "none"}):  # neither moves a pixel
        bundle = build_datasets(_fashion(tmp_path, monkeypatch, **settings))
        assert bundle.train_memory is not None
        torch.manual_seed(0)
        x = bundle.train_memory.batch(idx)[0]
        torch.manual_seed(0)
        ref = collate([bundle.train[i] for i in range(64)])[0]  # the per-sample path
        assert torch.equal(x, ref), settings


def test_in_memory_validation_only_where_it_equals_the_per_sample_path(tmp_path, monkeypatch):
    from mnv2export.data import build_datasets, collate

    bundle = build_datasets(_fashion(tmp_path, monkeypatch, resize_size=32))  # resize 32, centre crop 28
    idx = torch.arange(8)
    ref = collate([bundle.val[i] for i in range(8)])[0]
    assert bundle.val_memory is None or torch.equal(bundle.val_memory.batch(idx)[0], ref)


def test_synth_seed_changes_the_images_and_the_fingerprint():
    from mnv2export.data import build_datasets
    from mnv2export.data.synth import SynthDataset

    a, b = SynthDataset(3, 2, 32, "train", seed=0), SynthDataset(3, 2, 32, "train", seed=1)
    assert not np.array_equal(np.asarray(a.image(0)), np.asarray(b.image(0)))
    cfg = DataConfig(source="synth", img_size=32, synth_classes=3, synth_train_per_class=2, synth_val_per_class=1)
    assert build_datasets(cfg).fingerprint != build_datasets(cfg.replace(synth_seed=1)).fingerprint


def test_synth_validation_images_are_not_augmented():
    """Validation goes through the eval transform only (resize, centre crop, normalise), never the train one."""
    from mnv2export.data import build_datasets, eval_transform

    cfg = DataConfig(source="synth", img_size=32, synth_classes=2, synth_train_per_class=2, synth_val_per_class=2)
    val = build_datasets(cfg).val
    torch.manual_seed(0)
    a = val[1][0]
    torch.manual_seed(1)
    b = val[1][0]
    assert torch.equal(a, b) and torch.equal(a, eval_transform(cfg)(val.image(1)))


def test_fashion_mnist_cache_left_truncated_is_extracted_again(tmp_path, monkeypatch):
    """Two runs started together on a new machine once shared one temporary name while extracting: one of them left a
    0-byte train-images file in the cache, and every later run failed on it ('invalid literal for int()')."""
    cfg = _fashion(tmp_path, monkeypatch)
    build_datasets(cfg)
    cached = next((tmp_path / "cache").glob("fashion-mnist-*/FashionMNIST/raw/train-images-idx3-ubyte"))
    whole = cached.read_bytes()
    cached.write_bytes(b"")  # what the race (or a kill mid-extraction) left
    assert len(build_datasets(cfg).train) == 64
    assert cached.read_bytes() == whole
    assert not [p.name for p in cached.parent.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_fashion_mnist_runs_extracting_together_each_get_whole_files(tmp_path, monkeypatch):
    import multiprocessing

    from mnv2export.data import fashion

    monkeypatch.setenv("MNV2_CACHE", str(tmp_path / "cache"))
    files = fashion._find_files(write_fashion_idx(tmp_path / "fm", n_train=4000, n_test=2000))
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        roots = pool.map(fashion._torchvision_root, [files] * 4)
    assert len(set(roots)) == 1
    raw = Path(roots[0]) / "FashionMNIST" / "raw"
    for name, archive in files.items():
        with gzip.open(archive, "rb") as fh:
            assert (raw / name).read_bytes() == fh.read(), name
    assert sorted(p.name for p in raw.iterdir()) == sorted(fashion.FILES)


def test_fashion_mnist_damaged_archive_or_idx_file_is_a_data_error(tmp_path, monkeypatch):
    cfg = _fashion(tmp_path, monkeypatch)
    archive = Path(cfg.data_dir) / "train-images-idx3-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:-40])  # cut short
    with pytest.raises(DataError, match="archive cannot be read"):
        build_datasets(cfg)
    plain = tmp_path / "plain" / "FashionMNIST" / "raw"  # torchvision's own layout, uncompressed: read in place
    plain.mkdir(parents=True)
    for gz in sorted(Path(write_fashion_idx(tmp_path / "fm2")).glob("*.gz")):
        with gzip.open(gz, "rb") as fh:
            (plain / gz.name.removesuffix(".gz")).write_bytes(fh.read())
    (plain / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08")
    with pytest.raises(DataError, match="IDX files cannot be read"):
        build_datasets(cfg.replace(data_dir=str(tmp_path / "plain")))


# ------------------------------------------------------------------------------------- a folder of class folders
def _flat(root, counts=(("cat", 40), ("dog", 40), ("owl", 3))):
    rng = np.random.default_rng(1)
    for name, n in counts:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / name / f"{i:03d}.png")
    return root


def test_a_folder_of_class_folders_is_split_by_val_split_the_same_every_time(tmp_path):
    """Users' own photos come as <root>/<class>/*.jpg. --val-split holds out that share of each class, by a hash of
    each file's path: the same split every run, every class on both sides, and an added image moves no other."""
    from mnv2export.data.folder import split_classes

    root = _flat(tmp_path / "photos")
    classes, train, val = split_classes(root, 0.25)
    assert classes == ["cat", "dog", "owl"] and (classes, train, val) == split_classes(root, 0.25)
    assert not set(train) & set(val) and len(train) + len(val) == 83
    per_class = {c: sum(label == i for _, label in val) for i, c in enumerate(classes)}
    assert 5 <= per_class["cat"] <= 16 and 5 <= per_class["dog"] <= 16, per_class  # about 10 of 40 (binomial spread)
    assert per_class["owl"] in (1, 2) and sum(label == 2 for _, label in train) >= 1  # 3 images: one at least each side
    assert all(Path(p).parent.name == classes[label] for p, label in train + val)
    Image.new("RGB", (20, 20)).save(root / "cat" / "new.png")
    _, train2, val2 = split_classes(root, 0.25)
    assert set(val) <= set(val2) and set(train) <= set(train2)
    bundle = build_datasets(_cfg(root, val_split=0.25))
    assert bundle.class_names == classes and (len(bundle.train), len(bundle.val)) == (len(train2), len(val2))
    assert bundle.fingerprint != build_datasets(_cfg(root, val_split=0.1)).fingerprint


@pytest.mark.parametrize(
    "setup, kw, match",
    [
        (
            lambda r: _flat(r),
            {},
            r"no 'train' folder in the data folder .* or hold out part of each class folder with val_split 0\.1",
        ),
        (
            lambda r: _folder(r),
            {"val_split": 0.2},
            r"val_split = 0\.2 is for a folder of class folders, but this one holds train/ and val/",
        ),
        (
            lambda r: _flat(r, (("cat", 5), ("dog", 1))),
            {"val_split": 0.2},
            "a single image cannot be split into train and val: dog",
        ),
        (
            lambda r: _flat(r, (("cat", 5),)) and (r / "empty").mkdir(),
            {"val_split": 0.2},
            r"class folder\(s\) with no images in the data folder: empty",
        ),
    ],
)
def test_val_split_refusals(tmp_path, setup, kw, match):
    root = tmp_path / "d"
    root.mkdir()
    setup(root)
    with pytest.raises(DataError, match=match):
        build_datasets(_cfg(root, **kw))


def test_val_split_is_a_share_of_a_folder_not_of_a_built_in_set():
    from mnv2export.errors import ConfigError

    with pytest.raises(ConfigError, match=r"val_split = 0\.6 is out of range"):
        DataConfig(source="photos", val_split=0.6)
    with pytest.raises(ConfigError, match="synth has its own validation split: leave val_split out"):
        DataConfig(source="synth", val_split=0.1)


def test_the_check_and_the_calibration_read_the_run_s_own_split_of_its_folder(tmp_path, monkeypatch):
    """A run trained on <root>/<class>/ with --val-split: its check draws the held-out images (labelled), its INT8
    calibration the training ones; read as a plain folder, the check would have judged accuracy on training images."""
    from types import SimpleNamespace

    from mnv2export.check.inputs import load_real_images
    from mnv2export.data.folder import split_classes
    from mnv2export.export.calib import load_calibration

    root = _flat(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    cfg = DataConfig(source="photos", img_size=16, val_split=0.25)  # relative, as `mnv2 train --data photos` stores it
    ckpt = SimpleNamespace(data_config=cfg, class_names=["cat", "dog", "owl"])
    _, train, val = split_classes(root, 0.25)

    def files(keys):
        return sorted(str(Path(k).resolve()) for k in keys)

    real = load_real_images(ckpt, None, samples=500)
    assert files(real.keys) == files(p for p, _ in val) and "held out for validation" in real.source
    assert sorted(real.labels.tolist()) == sorted(label for _, label in val)
    assert files(load_real_images(ckpt, str(root), samples=500).keys) == files(
        p for p, _ in val
    )  # the same folder, named
    calib = load_calibration(ckpt, None, 500)
    assert len(calib.images) == len(train) and "train split of --val-split 0.25" in calib.source
    plain = load_real_images(
        SimpleNamespace(data_config=cfg.replace(val_split=0.0), class_names=ckpt.class_names), str(root), samples=500
    )
    assert len(plain.keys) == 83  # a folder no run split: every image


# ------------------------------------------------------------------------------------- EXIF orientation
# how a camera stores an upright scene for each EXIF orientation tag (EXIF 2.3, 0x0112): 6 = the stored image must be
# turned 90 degrees clockwise to be upright, so it holds the scene turned 90 degrees counter-clockwise (ROTATE_90)
_STORED_AS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def _save_as_camera(upright: Image.Image, path: Path, orientation: int, **kw) -> Path:
    """``upright`` saved as a camera stores it with EXIF ``orientation``: the pixels turned, the tag saying how back."""
    stored = upright if _STORED_AS[orientation] is None else upright.transpose(_STORED_AS[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, exif=exif, **kw)
    return path


def _scene(seed=0, h=12, w=20) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_each_of_the_eight_tags_upright_only_when_asked(tmp_path, orientation):
    """With exif_orientation the image comes out as the scene was (every one of the 8 tags, lossless PNG); without it,
    the pixels as stored, as torchvision's ImageFolder loader gives them."""
    upright = _scene()
    path = _save_as_camera(upright, tmp_path / "p.png", orientation)
    stored = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(np.asarray(open_rgb(path, exif_orientation=True)), np.asarray(upright))
    assert np.array_equal(np.asarray(open_rgb(path)), stored)
    assert (stored.shape == np.asarray(upright).shape) == (orientation <= 4)  # tags 5-8 swap width and height


def test_a_sideways_phone_jpeg_comes_out_upright_and_a_broken_exif_block_leaves_the_pixels(tmp_path, monkeypatch):
    """A JPEG stored landscape with tag 6 (a phone held upright): red on the left as stored, on top once turned."""
    scene = np.zeros((40, 20, 3), np.uint8)  # portrait: top half red, bottom half blue
    scene[:20], scene[20:] = (255, 0, 0), (0, 0, 255)
    path = _save_as_camera(Image.fromarray(scene), tmp_path / "phone.jpg", 6, quality=95)
    stored, upright = np.asarray(open_rgb(path)), np.asarray(open_rgb(path, exif_orientation=True))
    assert stored.shape == (20, 40, 3) and stored[10, 5, 0] > 200 and stored[10, 35, 2] > 200  # red left, blue right
    assert upright.shape == (40, 20, 3)  # JPEG blurs the colour edge: compared away from it
    assert (
        np.abs(upright[:16].astype(int) - scene[:16]).max() < 16
        and np.abs(upright[24:].astype(int) - scene[24:]).max() < 16
    )

    _scene().save(tmp_path / "garbage.jpg", exif=b"Exif\x00\x00not a TIFF header")  # Pillow reads no tag from it
    assert np.asarray(open_rgb(tmp_path / "garbage.jpg", exif_orientation=True)).shape == (12, 20, 3)
    import PIL.ImageOps

    def broken(*args, **kwargs):
        raise SyntaxError("corrupt EXIF")

    monkeypatch.setattr(PIL.ImageOps, "exif_transpose", broken)  # one Pillow cannot read: the image is still read
    assert np.array_equal(np.asarray(open_rgb(path, exif_orientation=True)), stored)


def test_every_reader_of_a_model_decodes_its_photos_upright_alike(tmp_path, monkeypatch):
    """exif_orientation is a data setting, so training (both splits), the check's real images, calibration and
    predict (load_images) all decode a sideways photo as the same upright image; it is refused for built-in sets."""
    from types import SimpleNamespace

    from mnv2export.check.inputs import load_real_images
    from mnv2export.data import eval_transform
    from mnv2export.data.transforms import preprocessing_spec
    from mnv2export.errors import ConfigError
    from mnv2export.export.calib import load_calibration

    scenes = {}
    for c, cls in enumerate(("cat", "dog")):
        for i in range(6):
            scenes[f"{cls}/{i}.png"] = _scene(seed=10 * c + i, h=24, w=40)
            _save_as_camera(scenes[f"{cls}/{i}.png"], tmp_path / "photos" / cls / f"{i}.png", (6, 8, 3)[i % 3])
    monkeypatch.chdir(tmp_path)
    cfg = DataConfig(
        source="photos", img_size=16, val_split=0.25, exif_orientation=True, train_aug="crop_pad", pad=0, hflip=False
    )
    to_tensor = eval_transform(cfg)

    def upright(path) -> torch.Tensor:
        return to_tensor(scenes[f"{Path(path).parent.name}/{Path(path).name}"])

    bundle = build_datasets(cfg)
    for ds in (bundle.train, bundle.val):
        for i, (path, _) in enumerate(ds.samples):
            assert np.array_equal(
                np.asarray(ds.image(i)), np.asarray(scenes[f"{Path(path).parent.name}/{Path(path).name}"])
            )
    for i, (path, _) in enumerate(bundle.val.samples):
        assert torch.equal(bundle.val[i][0], upright(path))
    files = sorted((tmp_path / "photos").rglob("*.png"))
    batch, kept, _ = load_images(files, cfg)  # predict's and calibration's decoding
    assert torch.equal(batch, torch.stack([upright(f) for f in files]))
    ckpt = SimpleNamespace(data_config=cfg, class_names=["cat", "dog"])
    real = load_real_images(ckpt, None, samples=500)
    assert len(real) == len(bundle.val) and np.array_equal(
        real.batch(cfg.to_dict()), np.stack([upright(k).numpy() for k in real.keys])
    )
    assert len(load_calibration(ckpt, None, 500).images) == len(bundle.train)
    as_stored = load_images(files, cfg.replace(exif_orientation=False))[0]
    assert not torch.equal(as_stored, batch)  # the setting is what turns them

    spec = preprocessing_spec(cfg)
    assert spec["exif_orientation"] is True and "exif_transpose" in spec["decode"]
    assert preprocessing_spec(cfg.replace(exif_orientation=False))["exif_orientation"] is False
    with pytest.raises(ConfigError, match="exif_orientation is for image files.*leave exif_orientation out"):
        DataConfig(source="synth", exif_orientation=True)


def test_the_orientation_tag_is_read_from_the_header_and_sampled_over_the_classes(tmp_path):
    from mnv2export.images import exif_orientation_of, sideways_photos

    assert exif_orientation_of(_save_as_camera(_scene(), tmp_path / "six.jpg", 6)) == 6
    assert exif_orientation_of(_save_as_camera(_scene(), tmp_path / "eight.png", 8)) == 8
    _scene().save(tmp_path / "plain.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    assert exif_orientation_of(tmp_path / "plain.jpg") == 1 and exif_orientation_of(tmp_path / "broken.jpg") == 1
    paths = [str(tmp_path / "plain.jpg")] * 199 + [str(tmp_path / "six.jpg")]
    assert sideways_photos(paths) == (1, 64)  # 64 spread over the list, its last entry among them
    assert sideways_photos(paths[:3]) == (0, 3) and sideways_photos([]) == (0, 0)


# ------------------------------------------------------------------------------------- formats and listing
def _formats_tree(root: Path) -> Path:
    """train/ and val/ of two classes: ``mixed`` (PNG, WebP, CMYK TIFF, 16-bit TIFF, an animated GIF, a palette GIF
    with transparency) and ``gifs`` (only GIFs, as a digits set converted from the web is); a text file and a HEIC
    photo beside them, which no reader here decodes."""
    rng = np.random.default_rng(3)
    for split in ("train", "val"):
        mixed, gifs = root / split / "mixed", root / split / "gifs"
        mixed.mkdir(parents=True)
        gifs.mkdir(parents=True)
        rgb = Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
        rgb.save(mixed / "a.png")
        rgb.save(mixed / "b.webp")
        rgb.convert("CMYK").save(mixed / "c.tif")
        Image.fromarray(rng.integers(0, 65535, (20, 24)).astype(np.uint16)).save(mixed / "d.tiff")
        frames = [Image.new("RGB", (24, 20), colour) for colour in ((250, 0, 0), (0, 0, 250))]
        frames[0].save(mixed / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
        palette = Image.fromarray(rng.integers(0, 4, (20, 24), dtype=np.uint8), mode="L").convert("P")
        palette.save(mixed / "clear.gif", transparency=0)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).convert("P").save(gifs / f"{i}.GIF")
    (root / "train" / "mixed" / "notes.txt").write_text("where the photos came from")
    (root / "val" / "gifs" / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    return root


def test_gif_webp_and_tiff_images_are_read_and_other_files_named_in_one_warning(tmp_path, caplog):
    """torchvision's extension list leaves .gif out: 17% of a digits set vanished and a class of GIFs was "no images".
    GIF (its first frame), WebP and TIFF of every mode are read as RGB; a file left out for its extension is counted
    and named, in one warning for the whole data folder."""
    root = _formats_tree(tmp_path / "d")
    with caplog.at_level(logging.WARNING, logger="mnv2export"):
        bundle = build_datasets(_cfg(root))
    assert bundle.class_names == ["gifs", "mixed"]
    for ds in (bundle.train, bundle.val):
        assert [ds.targets.count(k) for k in (0, 1)] == [3, 6]
        for i in range(len(ds)):
            assert ds.image(i).mode == "RGB" and ds[i][0].shape == (3, 32, 32)
    anim = next(i for i, (p, _) in enumerate(bundle.train.samples) if p.endswith("anim.gif"))
    assert np.asarray(bundle.train.image(anim))[0, 0].tolist() == [250, 0, 0]  # the first frame
    warned = [r.getMessage() for r in caplog.records if "notes.txt" in r.getMessage() or "photo.heic" in r.getMessage()]
    assert len(warned) == 1 and "skipped 2 file(s) with extension(s) .heic, .txt" in warned[0], caplog.text
    assert "train/mixed/notes.txt" in warned[0] and "val/gifs/photo.heic" in warned[0]


def test_a_class_of_files_no_reader_takes_says_which_extensions_it_holds(tmp_path):
    root = _tree(tmp_path / "d", {"train": ["a", "b"], "val": ["a", "b"]})
    for split in ("train", "val"):
        for p in (root / split / "b").iterdir():
            p.rename(p.with_suffix(".heic"))
    with pytest.raises(
        DataError,
        match=r"with no images in train/: b \(they hold only files this tool does not read as images: \.heic\)",
    ):
        build_datasets(_cfg(root))


def test_the_check_and_calibration_list_a_folder_as_training_does(tmp_path, caplog):
    """The check's and the calibration's own listing read the GIFs too, and name the other files once each."""
    from types import SimpleNamespace

    from mnv2export.check.inputs import load_real_images
    from mnv2export.export.calib import load_calibration

    root = _formats_tree(tmp_path / "d")
    ckpt = SimpleNamespace(data_config=DataConfig(source="synth", img_size=16), class_names=["gifs", "mixed"])
    with caplog.at_level(logging.WARNING, logger="mnv2export"):
        real = load_real_images(ckpt, str(root), samples=500)
        calib = load_calibration(ckpt, str(root), 9)
    assert sorted(real.labels.tolist()) == [0] * 3 + [1] * 6 and len(calib.images) == 9
    assert sum("photo.heic" in r.getMessage() for r in caplog.records) == 1  # val/, by the check
    assert sum("notes.txt" in r.getMessage() for r in caplog.records) == 1  # train/, by the calibration


# ------------------------------------------------------------------------------------- calibration size
def _calib_folder(root: Path, readable: int, unreadable: int) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(4)
    for i in range(readable):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / f"ok{i:02d}.png")
    for i in range(unreadable):
        (root / f"bad{i:02d}.png").write_bytes(b"not a png")
    return root


def test_an_unreadable_calibration_image_is_replaced_and_fewer_are_said(tmp_path, caplog):
    """256 asked, 256 used: an image that cannot be decoded is replaced by another of the folder; when the folder
    holds fewer readable images than asked, a warning says how many were used."""
    from types import SimpleNamespace

    from mnv2export.export.calib import load_calibration

    folder = _calib_folder(tmp_path / "calib", readable=40, unreadable=10)
    ckpt = SimpleNamespace(data_config=DataConfig(source="synth", img_size=16), class_names=["a"])
    with caplog.at_level(logging.WARNING, logger="mnv2export"):
        calib = load_calibration(ckpt, str(folder), 36)
    assert len(calib.images) == 36 and "unreadable replaced" in calib.source
    assert "skipped unreadable image" in caplog.text and "asked" not in caplog.text
    assert np.array_equal(load_calibration(ckpt, str(folder), 36).images, calib.images)  # repeatable
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mnv2export"):
        assert len(load_calibration(ckpt, str(folder), 45).images) == 40
    assert "calibration on 40 images, 45 asked (--calib-size)" in caplog.text


def test_a_calibration_size_below_the_minimum_is_warned_about(tmp_path, caplog):
    """--calib-size 1 gave an INT8 model that failed its check, without a word."""
    from types import SimpleNamespace

    from mnv2export.export.calib import load_calibration

    folder = _calib_folder(tmp_path / "calib", readable=40, unreadable=0)
    ckpt = SimpleNamespace(data_config=DataConfig(source="synth", img_size=16), class_names=["a"])
    with caplog.at_level(logging.WARNING, logger="mnv2export"):
        assert len(load_calibration(ckpt, str(folder), 1).images) == 1
    assert "--calib-size 1 is below 32" in caplog.text and "may fail its check" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mnv2export"):
        load_calibration(ckpt, str(folder), 32)
        load_calibration(ckpt, str(folder), 40)
    assert caplog.text == ""


def test_a_class_index_naming_none_of_the_folders_is_an_error(tmp_path, caplog):
    """Another data set's index (or one keyed by class number) left every class with its folder name and a warning
    easily missed; a partial match stays a warning."""
    from mnv2export.data.folder import read_class_index

    (tmp_path / "idx.json").write_text(json.dumps({"0": ["n01440764", "tench"], "1": ["n01443537", "goldfish"]}))
    with pytest.raises(DataError, match="names none of the 2 class folders") as info:
        read_class_index(tmp_path / "idx.json", ["cat", "dog"])
    assert "cat, dog" in info.value.what and "n01440764" in info.value.what and info.value.hint
    root = _folder(tmp_path / "d", classes=("cat", "dog"))
    with pytest.raises(DataError, match="names none"):
        build_datasets(_cfg(root, class_index=str(tmp_path / "idx.json")))
    with caplog.at_level(logging.WARNING, logger="mnv2export"):
        assert read_class_index(tmp_path / "idx.json", ["cat", "n01440764"]) == ["cat", "tench"]
    assert "does not name 1 folder(s)" in caplog.text
