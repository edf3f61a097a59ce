"""mnv2 visualize: kernels and shallow / deep feature maps for a given image or the checkpoint's own validation image."""

from __future__ import annotations

from PIL import Image

from mnv2export.cli import main
from mnv2export.plots import visualize

PICTURES = ("kernels.png", "input.png", "feature_maps_shallow.png", "feature_maps_deep.png")


def _is_png(path) -> bool:
    with Image.open(path) as img:
        return img.format == "PNG" and img.size[0] > 50 and img.size[1] > 50


def test_default_image_is_a_validation_image(trained_checkpoint, tmp_path):
    result = visualize(trained_checkpoint, out_dir=tmp_path / "v")
    assert result.image and "validation image" in result.image and not result.notes
    assert sorted(p.name for p in result.files) == sorted(PICTURES)
    assert all(_is_png(p) for p in result.files)


def test_given_image_through_the_cli(trained_checkpoint, tmp_path, capsys):
    from mnv2export.data.synth import SynthDataset

    image = tmp_path / "cross.jpg"
    SynthDataset(4, 1, 80, "val").image(3).save(image)  # another size and format than the training images
    out = tmp_path / "pictures"
    code = main(["visualize", str(trained_checkpoint), "--image", str(image), "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0 and f"image: {image}" in stdout
    for name in PICTURES:
        assert _is_png(out / name), name
        assert str(out / name) in stdout


def test_data_not_at_hand_draws_the_kernels_and_says_why(tmp_path):
    from mnv2export.checkpoint import Checkpoint, save_checkpoint
    from mnv2export.config import DataConfig, ModelConfig
    from mnv2export.model import build_model

    cfg = ModelConfig(num_classes=3, width_mult=0.35)
    ckpt = Checkpoint(
        model_config=cfg,
        data_config=DataConfig(source=str(tmp_path / "gone"), img_size=32),
        class_names=["a", "b", "c"],
        state_dict=build_model(cfg).state_dict(),
    )
    path = save_checkpoint(ckpt, tmp_path / "run" / "best.pt")
    stale = tmp_path / "run" / "visualize"
    stale.mkdir(parents=True)
    for name in ("input.png", "feature_maps_shallow.png", "feature_maps_deep.png", "notes.txt"):
        (stale / name).write_bytes(b"an earlier call's picture of another image")
    result = visualize(path)
    assert result.out_dir == tmp_path / "run" / "visualize"
    assert [p.name for p in result.files] == ["kernels.png"] and _is_png(result.files[0])
    assert result.image is None and "--image" in result.notes[0]
    # the earlier pictures of an image are gone (they would sit beside these kernels as if drawn with them); others stay
    assert sorted(p.name for p in stale.iterdir()) == ["kernels.png", "notes.txt"]


def test_bad_inputs_are_one_line_errors(trained_checkpoint, exported, tmp_path, capsys):
    assert main(["visualize", str(exported.out_dir / "model.onnx")]) == 1
    assert "visualize needs a checkpoint, not an ONNX file" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    assert main(["visualize", str(trained_checkpoint), "--image", str(bad), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: image cannot be read") and "bad.png" in err[0]
    assert not (tmp_path / "o").exists()  # nothing written on a refused command


def test_training_curves_tick_whole_epochs_only():
    """A 3-epoch run's curves had ticks at epoch 1.5 and 2.5."""
    from mnv2export.plots import loss_curve_figure

    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_acc": 0.3 * e} for e in (1, 2, 3)]
    fig = loss_curve_figure(history)
    try:
        for ax in fig.axes:
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert {1.0, 2.0, 3.0} <= set(ticks) and all(float(t).is_integer() for t in ticks), ticks
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
