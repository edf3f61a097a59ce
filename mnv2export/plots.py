"""Pictures of a run and of a model: loss curves, first-layer kernels, feature maps, confusion matrix (matplotlib)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .fileio import atomic_path
from .layout import FEATURE_MAP_FILES, INPUT_FILE, KERNELS_FILE, LOSS_CURVE_FILE, VISUALIZE_DIR

if TYPE_CHECKING:
    from .checkpoint import Checkpoint
    from .config import DataConfig

log = logging.getLogger(__name__)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    pyplot().close(fig)
    return path


def loss_curve(history: list[dict[str, float]], path: Path) -> Path:
    return save_figure(loss_curve_figure(history), path)


def loss_curve_figure(history: list[dict[str, float]]):
    """The losses and the validation accuracy per epoch, side by side."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs: a 3-epoch run had ticks at 1.5 and 2.5
    ax1.plot(epochs, [r["train_loss"] for r in history], "o-", label="train loss")
    ax1.plot(epochs, [r["val_loss"] for r in history], "o-", label="val loss")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("cross-entropy"), ax1.legend(), ax1.grid(alpha=0.3)
    ax2.plot(epochs, [100 * r["val_acc"] for r in history], "o-", color="tab:green")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("val top-1 (%)"), ax2.grid(alpha=0.3)
    ax2.set_ylim(0, 100)
    fig.suptitle("training curves")
    return fig


def first_conv(model: nn.Module) -> nn.Conv2d:
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return conv


def kernels(model: nn.Module, path: Path, limit: int = 32) -> Path:
    """The first convolution's 3x3x3 kernels as colour tiles (each scaled to its own range)."""
    plt = pyplot()
    w = first_conv(model).weight.detach().float().cpu()[:limit]  # [k, 3, 3, 3]
    lo = w.amin(dim=(1, 2, 3), keepdim=True)
    hi = w.amax(dim=(1, 2, 3), keepdim=True)
    tiles = ((w - lo) / (hi - lo).clamp_min(1e-12)).permute(0, 2, 3, 1).numpy()
    fig = _tiles(plt, tiles, 1.1, interpolation="nearest")
    fig.suptitle(f"first-layer kernels ({len(tiles)} of {first_conv(model).out_channels})")
    return save_figure(fig, path)


def _tiles(plt, images, inches: float, cols: int = 8, **imshow):
    """A figure of ``images`` in rows of ``cols`` tiles, ``inches`` wide each, without axes."""
    rows = (len(images) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * inches, rows * inches), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i], **imshow)
    return fig


def feature_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """A shallow and a deep block of MobileNetV2's ``features``."""
    features = model.features  # type: ignore[attr-defined]
    return {"shallow": features[2], "deep": features[len(features) - 2]}


@torch.no_grad()
def feature_maps(model: nn.Module, image: torch.Tensor, out_dir: Path, limit: int = 16) -> list[Path]:
    """Activations of a shallow and a deep block for one preprocessed image ([3, H, W]); one PNG per block."""
    plt = pyplot()
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        block.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out.detach()))
        for name, block in feature_blocks(model).items()
    ]
    try:
        model.eval()(image.unsqueeze(0).float())
    finally:
        for h in hooks:
            h.remove()
    paths = []
    for name, act in captured.items():
        maps = act[0, :limit].cpu().numpy()
        fig = _tiles(plt, maps, 1.3, cmap="viridis")
        fig.suptitle(f"{name} block feature maps {tuple(act.shape[1:])} (first {len(maps)} channels)")
        paths.append(save_figure(fig, out_dir / f"feature_maps_{name}.png"))
    return paths


def confusion_matrix(confusion: list[list[int]], class_names: list[str], path: Path) -> Path:
    plt = pyplot()
    import numpy as np

    cm = np.asarray(confusion, dtype=float)
    n = len(class_names)
    size = min(14.0, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm / np.maximum(cm.sum(axis=1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), class_names, fontsize=7)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=6, color="black")
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"confusion matrix (val top-1 {100 * acc:.2f}%)")
    return save_figure(fig, path)


def training_pictures(
    run_dir: Path, history: list[dict[str, float]], best: Path, data: Any, confusion: list[list[int]] | None
) -> list[Path]:
    """The pictures a training run leaves beside its checkpoints."""
    from .checkpoint import load_checkpoint

    model = load_checkpoint(best).build_model()
    paths = [loss_curve(history, run_dir / LOSS_CURVE_FILE), kernels(model, run_dir / KERNELS_FILE)]
    image, _ = data.val[0]
    if isinstance(image, torch.Tensor):
        paths += feature_maps(model, image, run_dir)
    if confusion:
        paths.append(confusion_matrix(confusion, data.class_names, run_dir / "confusion_matrix.png"))
    return paths


# --------------------------------------------------------------------------------------------------- any checkpoint
def _denormalise(image: torch.Tensor, mean: list[float], std: list[float]):
    """A preprocessed [3, H, W] tensor back to an H x W x 3 array in [0, 1] for display."""
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    return (image.detach().float().cpu() * s + m).clamp(0, 1).permute(1, 2, 0).numpy()


def input_picture(image: torch.Tensor, mean: list[float], std: list[float], path: Path, title: str = "") -> Path:
    """The image as the model sees it (after resize and crop), de-normalised."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(_denormalise(image, mean, std), interpolation="nearest")
    ax.axis("off")
    ax.set_title(title or f"model input {tuple(image.shape[1:])}", fontsize=8)
    return save_figure(fig, path)


def sample_grid(
    images: torch.Tensor, labels: list[str], mean: list[float], std: list[float], path: Path, cols: int = 8
) -> Path:
    """Preprocessed images ([N, 3, H, W]) in a grid, each titled with its label."""
    plt = pyplot()
    rows = max(1, (len(images) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.4, rows * 1.6), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(_denormalise(images[i], mean, std), interpolation="nearest")
            ax.set_title(labels[i][:18], fontsize=6)
    return save_figure(fig, path)


@dataclass
class Visualization:
    out_dir: Path
    files: list[Path]
    image: str | None  # the image the feature maps are of, in words (None: no image at hand)
    notes: list[str] = field(default_factory=list)


def visualize(
    checkpoint: str | Path, image: str | Path | None = None, out_dir: str | Path | None = None
) -> Visualization:
    """First-layer kernels and the feature maps of a shallow and a deep block of ``checkpoint`` for ``image``.

    Without ``image``, the first validation image of the checkpoint's own data is used when that data is at hand;
    otherwise only the kernels are drawn and ``notes`` says why. Files: ``kernels.png``, ``input.png`` (what the model
    sees), ``feature_maps_shallow.png``, ``feature_maps_deep.png`` in ``out_dir`` (default ``<checkpoint folder>/visualize``).
    """
    from .checkpoint import load_checkpoint
    from .fileio import ensure_dir

    p = Path(checkpoint)
    _refuse_exported_model(p)
    ckpt = load_checkpoint(p)
    model = ckpt.build_model()
    notes: list[str] = []
    if image is not None:
        tensor, source = _read_image(image, ckpt.data_config), str(image)
    else:
        tensor, source = _first_validation_image(ckpt)
        if tensor is None:  # the kernels are drawn all the same
            notes.append(
                f"feature maps not drawn: the checkpoint's validation data ({ckpt.data_config.source}) is not at hand; "
                "pass --image FILE"
            )
    # made once the image is read: no empty folder on an error
    out = ensure_dir(out_dir if out_dir is not None else p.parent / VISUALIZE_DIR)
    title = Path(source).name if image else "validation image"
    files = _draw_model_pictures(model, ckpt.data_config, tensor, title, out)
    return Visualization(out_dir=out, files=files, image=source, notes=notes)


def _refuse_exported_model(p: Path) -> None:
    """Only a checkpoint will do: an exported model file has no blocks to hook the feature maps on."""
    from .errors import ArtifactError
    from .filekind import detect_format

    kind = detect_format(p)
    if kind != "pytorch":
        what = {"onnx": "an ONNX", "torchscript": "a TorchScript"}.get(kind, f"a {kind}")
        raise ArtifactError(
            f"visualize needs a checkpoint, not {what} file",
            path=p,
            hint="pass the best.pt the artifact was exported from (feature maps need the model's blocks)",
        )


def _read_image(image: str | Path, cfg: DataConfig) -> torch.Tensor:
    """``--image`` preprocessed as the checkpoint's data config says; an unreadable file is an error."""
    from .data import load_images
    from .errors import DataError

    batch, _, errors = load_images([image], cfg)
    if errors:
        raise DataError(
            f"image cannot be read: {errors[0].reason}", path=image, hint="pass an image file Pillow can decode"
        )
    return batch[0]


def _first_validation_image(ckpt: Checkpoint) -> tuple[torch.Tensor | None, str | None]:
    """The first validation image of the checkpoint's own data and its description; (None, None) when that data is
    not at hand."""
    from .data import build_datasets
    from .errors import DataError

    cfg = ckpt.data_config
    try:
        item, label = build_datasets(cfg, augment=False).val[0]
        if isinstance(item, torch.Tensor):
            return item, f"the first validation image of {cfg.source} (class {ckpt.class_names[label]})"
    except DataError as exc:
        log.debug("validation data not at hand: %s", exc)
    return None, None


def _draw_model_pictures(
    model: nn.Module, cfg: DataConfig, tensor: torch.Tensor | None, title: str, out: Path
) -> list[Path]:
    """The kernels always; the input and its feature maps when there is an image."""
    from .fileio import remove_outputs

    files = [kernels(model, out / KERNELS_FILE)]
    if tensor is None:  # an earlier call's pictures of another image would stay beside these kernels
        remove_outputs(out, (INPUT_FILE, *FEATURE_MAP_FILES))
    else:
        files.append(input_picture(tensor, cfg.mean, cfg.std, out / INPUT_FILE, title=title))
        files += feature_maps(model, tensor, out)
    return files
