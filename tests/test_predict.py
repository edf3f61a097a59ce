"""mnv2 predict: every artifact classifies real image files alike, from its own metadata alone; bad images are skipped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mnv2export.cli import main
from mnv2export.errors import ConfigError, DataError
from mnv2export.predict import predict

ARTIFACTS = ("model.torchscript.pt", "model.onnx", "model.int8.onnx", "model.fp16.onnx")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """The trained checkpoint's own validation images (synth, 4 classes, 32 px), written as PNG files, class = folder."""
    from conftest import TRAINED_DATA

    from mnv2export.data.synth import write_synth

    root = tmp_path_factory.mktemp("predict_images")
    write_synth(root, TRAINED_DATA["synth_classes"], 2, TRAINED_DATA["img_size"], val_per_class=4, seed=0)
    return root / "val"


def _top1(result, root: Path) -> dict[str, str]:
    return {Path(p.path).relative_to(root).as_posix(): p.label for p in result.predictions}


def test_every_artifact_agrees_on_top1(trained_checkpoint, exported, images):
    reference = predict([images], trained_checkpoint, top_k=3)
    assert reference.format == "pytorch" and len(reference.predictions) == 16 and not reference.skipped
    truth = {p.path: Path(p.path).parent.name for p in reference.predictions}
    correct = sum(p.label == truth[p.path] for p in reference.predictions)
    assert correct >= 12, f"the trained model should classify its own validation images ({correct}/16)"
    for name in ARTIFACTS:
        result = predict([images], exported.out_dir / name, top_k=3)
        assert result.format == ("torchscript" if name.endswith(".pt") else "onnx")
        assert _top1(result, images) == _top1(reference, images), name
        for a, b in zip(result.predictions, reference.predictions):
            # FP16 keeps 11 significant bits (a step of ~1e-3 near 1.0): its probabilities differ by a few such steps
            tol = 0.1 if "int8" in name else 5e-3 if "fp16" in name else 1e-3
            assert abs(a.top[0]["probability"] - b.top[0]["probability"]) < tol, (name, a.path)


def test_probabilities_are_a_softmax_in_order(exported, images):
    result = predict([images / "00-circle-solid"], exported.out_dir / "model.onnx", top_k=50)
    assert result.top_k == 4  # at most the class count
    for p in result.predictions:
        probs = [t["probability"] for t in p.top]
        assert probs == sorted(probs, reverse=True)
        assert abs(sum(probs) - 1.0) < 1e-6
        assert {t["class"] for t in p.top} == {
            "00-circle-solid",
            "01-square-solid",
            "02-triangle-solid",
            "03-cross-solid",
        }
        assert all(p.top[i]["class"] == result_names(exported)[p.top[i]["index"]] for i in range(4))


def result_names(exported) -> list[str]:
    from mnv2export.runtime import read_metadata

    return read_metadata(exported.out_dir / "model.onnx")["class_names"]


def test_unreadable_images_are_named_and_skipped(exported, images, tmp_path, capsys):
    folder = tmp_path / "mixed"
    shutil.copytree(images / "01-square-solid", folder)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image, and not an image extension: ignored in a folder")
    missing = tmp_path / "missing.jpg"
    result = predict([folder, missing], exported.out_dir / "model.int8.onnx")
    assert len(result.predictions) == 4
    skipped = {Path(s["path"]).name: s["reason"] for s in result.skipped}
    assert set(skipped) == {"corrupt.png", "empty.jpg", "missing.jpg"}
    assert "not found" in skipped["missing.jpg"]

    code = main(
        ["predict", str(folder), str(missing), "--model", str(exported.out_dir / "model.int8.onnx"), "--top-k", "2"]
    )
    out = capsys.readouterr()
    assert code == 0
    assert "corrupt.png" in out.err and "empty.jpg" in out.err and "missing.jpg" in out.err
    assert out.out.count("01-square-solid") >= 4  # each readable image printed with its classes


def test_no_readable_image_is_an_error(exported, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match="none of the 1 image"):
        predict([bad], exported.out_dir / "model.onnx")
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(DataError, match="no image files found"):
        predict([empty], exported.out_dir / "model.onnx")
    with pytest.raises(DataError, match=r"^not found \(.*nope\.jpg\)"):  # a mistyped path says so
        predict([tmp_path / "nope.jpg"], exported.out_dir / "model.onnx")
    with pytest.raises(DataError, match="no image files found"):  # a mix: the folder holds none either
        predict([empty, tmp_path / "nope.jpg"], exported.out_dir / "model.onnx")
    code = main(["predict", str(bad), "--model", str(exported.out_dir / "model.onnx")])
    err = capsys.readouterr().err
    assert code == 1 and err.strip().splitlines()[-1].startswith("error: none of the 1 image(s) could be read")
    with pytest.raises(ConfigError, match=r"^top_k = 0 is out of range"):
        predict([bad], exported.out_dir / "model.onnx", top_k=0)


def test_exported_files_work_alone(exported, images, tmp_path, monkeypatch, capsys):
    """Only the TorchScript / ONNX file, copied to an empty folder, run from there: no checkpoint, no manifest."""
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("model.torchscript.pt", "model.onnx"):
        shutil.copy(exported.out_dir / name, alone / name)
    monkeypatch.chdir(alone)
    for name in ("model.torchscript.pt", "model.onnx"):
        code = main(["predict", str(images), "--model", name, "--json", "-", "--top-k", "1"])
        out = capsys.readouterr().out
        assert code == 0
        data = json.loads(out)
        assert data["model"] == name and len(data["predictions"]) == 16 and data["skipped"] == []
        original = predict([images], exported.out_dir / name, top_k=1)
        assert [p["top"][0]["class"] for p in data["predictions"]] == [p.label for p in original.predictions]
        assert np.allclose(
            [p["top"][0]["probability"] for p in data["predictions"]],
            [p.top[0]["probability"] for p in original.predictions],
        )


def test_cuda_provider_without_gpu_is_a_clear_error(exported, images, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code = main(["predict", str(images), "--model", str(exported.out_dir / "model.onnx"), "--provider", "cuda"])
    assert code == 1 and "CUDA was asked for" in capsys.readouterr().err
    code = main(
        ["predict", str(images), "--model", str(exported.out_dir / "model.torchscript.pt"), "--provider", "cuda"]
    )
    err = capsys.readouterr().err
    assert (
        code == 1 and "CUDA was asked for" in err and "--provider cpu" in err and "--device" not in err
    )  # predict has no --device


# --------------------------------------------------------------------------------------------------- predict
def test_softmax_is_stable_for_large_logits():
    from mnv2export.predict import softmax

    p = softmax(np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]], np.float32))
    assert np.all(np.isfinite(p)) and np.allclose(p.sum(1), 1.0)
    assert p[0, 0] == pytest.approx(1.0) and np.allclose(p[1], 1 / 3)


def test_hidden_files_in_folders_are_left_out(tmp_path):
    from mnv2export.predict import collect_images

    (tmp_path / "d" / ".cache").mkdir(parents=True)
    for name in ("d/a.png", "d/.b.png", "d/.cache/c.png"):
        (tmp_path / name).write_bytes(b"")
    files, skipped = collect_images([tmp_path / "d"])
    assert [f.name for f in files] == ["a.png"] and not skipped


def test_more_images_than_one_batch_are_all_classified(exported, tmp_path):
    from mnv2export.data.synth import write_synth
    from mnv2export.predict import predict

    write_synth(tmp_path / "s", num_classes=4, per_class=2, size=32, val_per_class=1)
    files = sorted((tmp_path / "s" / "train").rglob("*.png"))
    result = predict([tmp_path / "s" / "train"], exported.out_dir / "model.onnx", batch_size=3)
    assert [p.path for p in result.predictions] == [str(f) for f in files] and len(files) == 8


def test_a_file_that_is_not_what_its_manifest_records_is_warned_about(
    trained_checkpoint, exported, images, tmp_path, capsys
):
    """predict served any file in an export folder: one changed since export, or one the manifest does not list (left
    from another export), ran without a word, though `mnv2 check` never verified it. Now it is said (and still run)."""
    folder = tmp_path / "export"
    shutil.copytree(exported.out_dir, folder)
    assert predict([images], folder / "model.onnx", top_k=1).warnings == []  # the exported file as it was written
    shutil.copy(folder / "model.int8.onnx", folder / "model.onnx")  # another model under the listed name
    shutil.copy(folder / "model.onnx", folder / "spare.onnx")
    for name, expect in (
        ("model.onnx", "model.onnx changed since export"),
        ("spare.onnx", "spare.onnx is not listed in"),
    ):
        code = main(["predict", str(images), "--model", str(folder / name), "--json", "-", "--top-k", "1"])
        captured = capsys.readouterr()
        assert code == 0 and len(json.loads(captured.out)["predictions"]) == 16
        assert json.loads(captured.out)["warnings"][0].startswith(expect)
        assert expect in captured.err  # on stderr too, as every warning
    (folder / "manifest.json").write_text("{")
    assert "not a readable manifest" in predict([images], folder / "model.onnx", top_k=1).warnings[0]
    shutil.copy(
        trained_checkpoint, folder / "best.pt"
    )  # a checkpoint kept beside its export is not one of its artifacts
    assert predict([images], folder / "best.pt", top_k=1).warnings == []


def _readme_snippet(name: str) -> str:
    text = (Path(__file__).resolve().parent.parent / "docs" / "artifacts.md").read_text()
    block = text.split(f"<!-- snippet: {name} -->", 1)[1].split("<!-- end snippet -->", 1)[0]
    return block.strip().removeprefix("```python").removesuffix("```")


def _with_preprocessing(src: Path, dst: Path, **data) -> Path:
    """A copy of an exported ONNX file whose metadata asks for another validation resize / interpolation (the weights
    do not care): the same change in data_config, which mnv2 predict follows, and in the preprocessing entry."""
    import onnx

    from mnv2export.config import DataConfig
    from mnv2export.data.transforms import preprocessing_spec

    model = onnx.load(str(src))
    prop = next(p for p in model.metadata_props if p.key == "mnv2_metadata")
    meta = json.loads(prop.value)
    cfg = DataConfig.from_dict({**meta["data_config"], **data})
    meta.update(
        data_config=cfg.to_dict(),
        resize_size=cfg.resize,
        interpolation=cfg.interpolation,
        preprocessing=preprocessing_spec(cfg),
    )
    prop.value = json.dumps(meta)
    onnx.save(model, str(dst))
    return dst


@pytest.mark.parametrize(
    "data",
    [{}, {"resize_size": 41, "interpolation": "bicubic"}, {"source": "photos", "exif_orientation": True}],
    ids=["as-exported", "resize-41-bicubic", "exif-orientation"],
)
def test_the_readmes_standalone_serving_code_answers_like_predict(exported, images, tmp_path, data):
    """README, 'Serving an artifact without mnv2export': its Pillow + NumPy + ONNX Runtime code, run as written, from
    the metadata's preprocessing entry alone, gives mnv2 predict's classes and probabilities (1e-5), on square,
    non-square, grayscale, RGBA and smaller-than-the-crop images and sideways phone photos (EXIF orientation 6 and 8),
    with and without a resize beyond the crop, and for a model trained with --exif-orientation."""
    from PIL import Image

    assert read_onnx_preprocessing(exported.out_dir / "model.onnx")["center_crop"] == [32, 32]
    model = _with_preprocessing(exported.out_dir / "model.onnx", tmp_path / "model.onnx", **data)
    src = np.asarray(Image.open(sorted(images.rglob("*.png"))[0]).convert("RGB"))
    extra = tmp_path / "extra"
    extra.mkdir()
    Image.fromarray(src).resize((50, 37)).save(extra / "wide.png")
    Image.fromarray(src).resize((23, 61), Image.BICUBIC).convert("L").save(extra / "tall_gray.png")
    Image.fromarray(src).resize((20, 20)).convert("RGBA").save(extra / "small_rgba.png")
    Image.fromarray(src).resize((33, 32)).save(extra / "odd.jpg", quality=90)
    for tag, turn in (
        (6, Image.Transpose.ROTATE_90),
        (8, Image.Transpose.ROTATE_270),
    ):  # stored sideways, as a phone does
        exif = Image.Exif()
        exif[0x0112] = tag
        Image.fromarray(src).resize((30, 45)).transpose(turn).save(extra / f"phone_{tag}.jpg", exif=exif, quality=90)
    files = [str(f) for f in sorted(images.rglob("*.png"))[:6]] + [str(f) for f in sorted(extra.iterdir())]
    code = _readme_snippet("serve-onnx")
    code = code.replace('"runs/quickstart/export/model.onnx"', repr(str(model))).replace('["photo.jpg"]', repr(files))
    namespace: dict = {}
    exec(compile(code, "README.md:serve-onnx", "exec"), namespace)  # the README's code as written, its example included
    session, meta = namespace["load_model"](str(model))
    from mnv2export.runtime import preprocess as tool_preprocess

    theirs_x, kept, errors = tool_preprocess(files, meta)
    mine_x = np.stack([namespace["preprocess"](f, meta["preprocessing"]) for f in files])
    assert kept == files and not errors and mine_x.dtype == np.float32
    assert np.abs(mine_x - theirs_x).max() < 1e-5  # the very input tensor, not only what the model makes of it
    mine = namespace["classify"](session, meta, files)
    theirs = predict(files, model, top_k=1)
    assert [p.path for p in theirs.predictions] == files and not theirs.skipped
    for (label, prob), p in zip(mine, theirs.predictions):
        assert label == p.label and abs(prob - p.top[0]["probability"]) < 1e-5, (p.path, label, prob, p.top[0])


def read_onnx_preprocessing(path: Path) -> dict:
    from mnv2export.runtime import read_metadata

    return read_metadata(path)["preprocessing"]


def test_threads_option(exported, images, capsys):
    """`predict()` took threads, the command had no --threads: a service sharing a machine could not cap predict."""
    assert (
        main(["predict", str(images), "--model", str(exported.out_dir / "model.onnx"), "--threads", "1", "--json", "-"])
        == 0
    )
    assert len(json.loads(capsys.readouterr().out)["predictions"]) == 16
    assert main(["predict", str(images), "--model", str(exported.out_dir / "model.onnx"), "--threads", "0"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: threads = 0 is out of range")


def _strict_json(text: str):
    """``json.loads`` as a strict parser reads it: NaN and Infinity are not JSON."""

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_nan_probabilities_are_null_in_json_and_nan_in_text(exported, images, tmp_path, capsys):
    """`predict --json -` printed bare NaN (strict JSON parsers refuse it) and the text `nan%`, for a model whose weights
    give NaN logits."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(exported.out_dir / "model.onnx"))
    init = next(i for i in model.graph.initializer if len(i.dims) == 2)  # the classifier's weights
    w = numpy_helper.to_array(init).copy()
    w[0, 0] = np.nan
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(tmp_path / "nan.onnx"))
    image = str(next(images.rglob("*.png")))
    assert main(["predict", image, "--model", str(tmp_path / "nan.onnx"), "--json", "-", "--top-k", "2"]) == 0
    data = _strict_json(capsys.readouterr().out)
    assert [t["probability"] for t in data["predictions"][0]["top"]] == [None, None]
    assert main(["predict", image, "--model", str(tmp_path / "nan.onnx"), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()[2:]
    assert len(lines) == 2 and all(line.strip().startswith("nan ") for line in lines) and "%" not in "".join(lines), (
        lines
    )


def foreign_onnx(real: Path, out: Path) -> Path:
    """A tiny graph of another structure (average pool, then one linear layer) with the same input and output as
    ``real``, and ``real``'s metadata copied into it."""
    import onnx
    from onnx import TensorProto, helper

    source = onnx.load(str(real))
    classes = source.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    w = helper.make_tensor("w", TensorProto.FLOAT, [classes, 3], np.ones((classes, 3), np.float32).ravel().tolist())
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "w"], ["logits"], transB=1),
        ],
        "foreign",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=source.ir_version)
    model.metadata_props.extend(source.metadata_props)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def test_a_foreign_onnx_graph_with_copied_metadata_is_refused_as_info_refuses_it(exported, images, tmp_path, capsys):
    """predict ran a foreign graph that carried metadata copied from an export (same input and output), which info
    refused: every command that loads an artifact now makes the same checks (runtime.validate_artifact)."""
    from mnv2export.errors import ArtifactError
    from mnv2export.runtime import load_artifact

    foreign = foreign_onnx(exported.out_dir / "model.onnx", tmp_path / "model.onnx")
    errors = []
    for command in (["info"], ["predict", str(images), "--model"]):
        assert main([*command, str(foreign)]) == 1
        errors.append(capsys.readouterr().err.strip().splitlines()[-1])
    assert errors[0] == errors[1], errors
    assert (
        errors[0].startswith("error: the model_config in the file's metadata does not describe its weights (12 ")
        and str(foreign) in errors[0]
    )
    with pytest.raises(ArtifactError, match="does not describe its weights"):  # check and bench load through here
        load_artifact(foreign)
