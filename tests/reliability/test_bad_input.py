"""The bad-input matrix: every case is one ``error:`` line and exit 1 (or, for images in a batch, named and skipped).

Runs the CLI in-process (``mnv2export.cli.main``) so that the matrix stays fast; the subprocess path is covered in
tests/test_cli.py.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from mnv2export.checkpoint import Checkpoint, save_checkpoint
from mnv2export.cli import main
from mnv2export.config import DataConfig, ModelConfig
from mnv2export.model import build_model


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def fails(capsys, *args, match: str) -> str:
    code, out, err = cli(capsys, *args)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 1, (code, out, err)
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0] and "Traceback" not in err, err
    assert match.lower() in errors[0].lower(), errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory, exported, trained_checkpoint):
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.pt").write_bytes(b"")
    (d / "empty.onnx").write_bytes(b"")
    (d / "folder.onnx").mkdir()
    blob = (exported.out_dir / "model.onnx").read_bytes()
    (d / "truncated.onnx").write_bytes(blob[: len(blob) // 3])
    (d / "garbage.onnx").write_bytes(b"\x08\x07" + bytes(range(256)) * 20)
    (d / "no_images" / "train" / "a").mkdir(parents=True)
    (d / "no_images" / "val" / "a").mkdir(parents=True)
    # a checkpoint of another architecture, and one with another class count
    payload = torch.load(trained_checkpoint, weights_only=True)
    payload["model_config"] = {**payload["model_config"], "arch": "resnet18"}
    torch.save(payload, d / "resnet.pt")
    cfg = ModelConfig(num_classes=3, width_mult=0.35)
    save_checkpoint(
        Checkpoint(
            cfg,
            DataConfig(source="synth", img_size=32, synth_classes=3),
            ["a", "b", "c"],
            build_model(cfg).state_dict(),
        ),
        d / "three.pt",
    )
    # an ONNX model that is valid but not ours (other input name and shape, no metadata)
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten()).eval()
    torch.onnx.export(conv, (torch.randn(1, 1, 8, 8),), str(d / "foreign.onnx"), input_names=["images"], dynamo=False)
    # ours, but its metadata claims another input size than the graph takes
    m = onnx.load(exported.out_dir / "model.onnx")
    for prop in m.metadata_props:
        if prop.key == "mnv2_metadata":
            meta = json.loads(prop.value)
            meta["input_size"] = [3, 48, 48]
            meta["data_config"]["img_size"] = 48
            prop.value = json.dumps(meta)
    onnx.save(m, d / "wrong_shape.onnx")
    # images of every kind
    imgs = d / "images"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(imgs / "good.png")
    Image.fromarray(rgb[..., 0]).save(imgs / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((40, 40), 128, np.uint8)])).save(imgs / "rgba.png")
    Image.fromarray((rng.integers(0, 65535, (40, 40))).astype(np.uint16)).save(imgs / "deep16.png")
    good = (imgs / "good.png").read_bytes()
    (imgs / "truncated.png").write_bytes(good[: len(good) // 2])
    (imgs / "zero.jpg").write_bytes(b"")
    Image.fromarray(rgb).save(imgs / "really_a_png.jpg", format="PNG")  # another format than its extension: fine
    (imgs / "text.png").write_text("this is not an image")
    Image.new("L", (12000, 12000)).save(imgs / "bomb.png")  # 144 Mpx: over Pillow's decompression-bomb limit
    return d


def test_nonexistent_paths(capsys, exported, trained_checkpoint, files, tmp_path):
    nope = tmp_path / "nope"
    fails(capsys, "export", nope / "best.pt", match="checkpoint not found")
    fails(capsys, "check", nope / "best.pt", match="not found")
    fails(capsys, "check", trained_checkpoint, "--artifacts", nope, match="not found")
    fails(capsys, "bench", nope, match="not found")
    fails(capsys, "info", nope / "model.onnx", match="not found")
    fails(capsys, "visualize", nope / "best.pt", match="not found")
    fails(capsys, "predict", nope / "x.png", "--model", exported.out_dir / "model.onnx", match="not found")
    fails(capsys, "predict", files / "images" / "good.png", "--model", nope / "model.onnx", match="not found")
    fails(capsys, "train", "--data", nope, match="data folder not found")
    fails(capsys, "train", "--data", "synth", "--init-from", nope / "w.pth", match="initial weights not found")


def test_empty_files_and_folders_where_files_belong(capsys, files, exported):
    fails(capsys, "export", files / "empty.pt", match="empty")
    fails(capsys, "info", files / "empty.onnx", match="empty")
    fails(capsys, "predict", files / "images" / "good.png", "--model", files / "empty.onnx", match="empty")
    fails(capsys, "export", files, match="folder")
    fails(capsys, "predict", files / "images" / "good.png", "--model", files / "folder.onnx", match="folder")
    fails(capsys, "train", "--data", "synth", "--init-from", files, match="initial weights")
    fails(capsys, "bench", files / "no_images", match="manifest")


def test_a_text_file_where_a_model_belongs_is_named_as_such(capsys, files, exported):
    """A manifest or config.json passed as the model: said plainly, not as a pickled-object alarm or an ONNX parser's
    error (onnx.load reads *.json as ONNX's JSON text format)."""
    manifest = exported.out_dir / "manifest.json"
    (files / "notes.txt").write_text("not a model")
    fails(capsys, "export", manifest, match="is a JSON file, not a torch checkpoint")
    fails(capsys, "check", manifest, match="is a JSON file, not a torch checkpoint")
    fails(capsys, "info", manifest, match="is a JSON file, not a model")
    fails(capsys, "predict", files / "images" / "good.png", "--model", manifest, match="is a JSON file, not a model")
    fails(capsys, "visualize", manifest, match="is a JSON file, not a model")
    fails(capsys, "info", files / "notes.txt", match="is a text file, not a model")


def test_malformed_onnx_is_an_error_not_a_crash(capsys, files, trained_checkpoint):
    for name in ("truncated.onnx", "garbage.onnx"):
        fails(capsys, "info", files / name, match="onnx")
        fails(capsys, "predict", files / "images" / "good.png", "--model", files / name, match="onnx")


def test_onnx_of_another_shape_or_name(capsys, files):
    fails(capsys, "predict", files / "images" / "good.png", "--model", files / "foreign.onnx", match="metadata")
    fails(capsys, "info", files / "foreign.onnx", match="metadata")
    fails(capsys, "predict", files / "images" / "good.png", "--model", files / "wrong_shape.onnx", match="48")


def test_folders_without_images(capsys, files, exported):
    fails(capsys, "train", "--data", files / "no_images", match="no images")
    fails(capsys, "predict", files / "no_images", "--model", exported.out_dir / "model.onnx", match="no image")


def test_every_kind_of_image_in_one_predict(capsys, files, exported):
    code, out, err = cli(capsys, "predict", files / "images", "--model", exported.out_dir / "model.onnx", "--json", "-")
    assert code == 0, err
    result = json.loads(out)
    classified = sorted(p["path"].rsplit("/", 1)[-1] for p in result["predictions"])
    skipped = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in result["skipped"]}
    assert classified == ["deep16.png", "good.png", "gray.png", "really_a_png.jpg", "rgba.png"]
    assert set(skipped) == {"truncated.png", "zero.jpg", "text.png", "bomb.png"}
    assert "decompression-bomb" in skipped["bomb.png"]


def _formats(d, rng) -> None:
    """GIF (animated; palette with transparency), WebP and CMYK / 16-bit TIFF images, and two files no reader takes."""
    d.mkdir(parents=True)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    rgb.save(d / "photo.webp")
    rgb.convert("CMYK").save(d / "print.tif")
    Image.fromarray(rng.integers(0, 65535, (40, 40)).astype(np.uint16)).save(d / "scan.tiff")
    rgb.save(d / "anim.gif", save_all=True, append_images=[rgb.rotate(90)], duration=100)
    Image.fromarray(rng.integers(0, 4, (40, 40), dtype=np.uint8), mode="L").convert("P").save(
        d / "clear.gif", transparency=0
    )
    (d / "notes.txt").write_text("where the images came from")
    (d / "iphone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")


def test_gif_webp_and_tiff_are_read_and_other_files_named_in_one_warning(capsys, tmp_path, exported):
    """torchvision's extension list leaves .gif out: a folder's GIFs were neither predicted nor named anywhere."""
    _formats(tmp_path / "formats", np.random.default_rng(1))
    code, out, err = cli(
        capsys, "predict", tmp_path / "formats", "--model", exported.out_dir / "model.onnx", "--json", "-"
    )
    assert code == 0, err
    classified = sorted(p["path"].rsplit("/", 1)[-1] for p in json.loads(out)["predictions"])
    assert classified == ["anim.gif", "clear.gif", "photo.webp", "print.tif", "scan.tiff"]
    warned = [line for line in err.splitlines() if "notes.txt" in line or "iphone.heic" in line]
    assert len(warned) == 1 and "skipped 2 file(s) with extension(s) .heic, .txt" in warned[0], err


def test_a_class_index_naming_none_of_the_class_folders_is_an_error(capsys, tmp_path):
    """It left every class named by its folder with a warning easily missed, and trained."""
    rng = np.random.default_rng(2)
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (tmp_path / "d" / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                    tmp_path / "d" / split / c / f"{i}.png"
                )
    (tmp_path / "idx.json").write_text(json.dumps({"0": ["n01440764", "tench"], "1": ["n01443537", "goldfish"]}))
    fails(
        capsys,
        "train",
        "--data",
        tmp_path / "d",
        "--class-index",
        tmp_path / "idx.json",
        "--img-size",
        "32",
        "--width",
        "0.35",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--no-plots",
        "--no-progress",
        "--out",
        tmp_path / "run",
        match="class-index file names none of the 2 class folders",
    )
    assert not (tmp_path / "run" / "best.pt").exists()


def test_checkpoints_of_another_architecture_or_class_count(capsys, files, exported):
    fails(capsys, "export", files / "resnet.pt", match="another architecture")
    fails(capsys, "info", files / "resnet.pt", match="another architecture")
    report = files / "three-check.json"
    code, out, err = cli(
        capsys, "check", files / "three.pt", "--artifacts", exported.out_dir, "--samples", "16", "--json", report
    )
    assert code == 1  # the artifacts do not belong to this checkpoint: every row fails, and says why
    rows = json.loads(report.read_text())["rows"]
    assert rows and {r["artifact"] for r in rows} >= set(exported.artifacts)
    for r in rows:
        assert r["status"] == "fail" and any(
            f.startswith("metadata class_names differs first at index 0") for f in r["failures"]
        ), r
        assert r["failures"][0].startswith("exported from another checkpoint: source_checkpoint_sha256 "), r


@pytest.mark.parametrize(
    "args, match",
    [
        (["bench", "{art}", "--batch", "0"], "batch"),
        (["bench", "{art}", "--batch", "-4"], "batch"),
        (["bench", "{art}", "--iters", "0"], "iters"),
        (["bench", "{art}", "--threads", "0"], "threads"),
        (["bench", "{art}", "--provider", "tpu"], "provider"),
        (["bench", "{art}", "--formats", "tflite"], "tflite"),
        (["check", "{ckpt}", "--artifacts", "{art}", "--provider", "tpu"], "provider"),
        (["check", "{ckpt}", "--artifacts", "{art}", "--samples", "0"], "samples"),
        (["check", "{ckpt}", "--artifacts", "{art}", "--atol", "-1"], "atol"),
        (["predict", "{img}", "--model", "{onnx}", "--provider", "tpu"], "provider"),
        (["predict", "{img}", "--model", "{onnx}", "--top-k", "0"], "top"),
        (["predict", "{img}", "--model", "{onnx}", "--batch-size", "0"], "batch"),
        (["export", "{ckpt}", "--format", "tflite"], "tflite"),
        (["export", "{ckpt}", "--quantize", "--calib-size", "0"], "calib"),
        (["export", "{ckpt}", "--opset", "3"], "opset"),
        (["export", "{ckpt}", "--quantize", "--calib-method", "magic"], "calibration method"),
        (["train", "--data", "synth", "--width", "5"], "width"),
        (["train", "--data", "synth", "--epochs", "-1"], "epochs"),
        (["train", "--data", "synth", "--lr", "0"], "lr"),
        (["train", "--data", "synth", "--img-size", "100000"], "--img-size"),
        (["pipeline", "--width", "0.1"], "width"),
        (["pipeline", "--epochs", "0"], "epochs"),
        (["data", "synth", "{tmp}/s", "--classes", "1"], "class"),
        (["data", "synth", "{tmp}/s", "--size", "2"], "size"),
    ],
)
def test_out_of_range_flags_unknown_providers_and_formats(
    capsys, args, match, exported, trained_checkpoint, files, tmp_path
):
    values = {
        "art": exported.out_dir,
        "ckpt": trained_checkpoint,
        "img": files / "images" / "good.png",
        "onnx": exported.out_dir / "model.onnx",
        "tmp": tmp_path,
    }
    fails(capsys, *[a.format(**{k: str(v) for k, v in values.items()}) for a in args], match=match)
    assert not (tmp_path / "s").exists()  # nothing written on a refused command


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/mnv2-untrusted-ran",))


def test_a_pickled_object_is_refused_by_every_command(capsys, tmp_path, trained_checkpoint, exported, files):
    import os

    payload = torch.load(trained_checkpoint, weights_only=True)
    payload["train_summary"] = {"note": _Evil()}
    evil = tmp_path / "run" / "best.pt"
    evil.parent.mkdir()
    torch.save(payload, evil)
    state = tmp_path / "evil.pth"
    torch.save({"features.0.0.weight": _Evil()}, state)
    for args in (
        ["export", evil],
        ["check", evil, "--artifacts", exported.out_dir],
        ["bench", evil, "--formats", "eager"],
        ["info", evil],
        ["visualize", evil],
        ["predict", files / "images" / "good.png", "--model", evil],
    ):
        fails(capsys, *args, match="pickled")
    fails(
        capsys,
        "train",
        "--data",
        "synth",
        "--init-from",
        state,
        "--out",
        tmp_path / "t",
        match="initial weights file carries a pickled Python object and is refused",
    )  # not torch's raw text
    assert not os.path.exists("/tmp/mnv2-untrusted-ran")
