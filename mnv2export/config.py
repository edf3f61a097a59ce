"""Configuration dataclasses: the model, the data and the training run.

They hold primitives only (str, int, float, bool, lists of those, None), so that they go into a checkpoint that loads
with ``torch.load(weights_only=True)`` and into JSON unchanged. Every value is checked when the object is built,
whatever it was built from (CLI flags, a recipe file, a checkpoint): a bad value is a :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

try:  # Python 3.11+ reads TOML itself; 3.10 takes the same reader from PyPI (tomli, a dependency there)
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from .errors import ConfigError
from .params import check_choice, check_int, check_number, is_int, is_number

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
TRAIN_AUGMENTATIONS = ("rrc", "crop_pad", "none")
# torchvision's automatic augmentation policies, by the names its reference scripts give them (--auto-augment):
# TrivialAugmentWide, RandAugment, AugMix, and AutoAugment with the policy learnt on ImageNet, CIFAR-10 or SVHN
AUTO_AUGMENTATIONS = ("none", "ta_wide", "ra", "augmix", "imagenet", "cifar10", "svhn")
# MobileNetV2's feature blocks (its ``features``): the stem, 17 inverted residual blocks, the last 1x1 convolution
FEATURE_BLOCKS = 19
BUILTIN_SOURCES = ("synth", "fashion-mnist")  # data sets the package reads itself; any other source is a folder

T = TypeVar("T", bound="_Config")
log = logging.getLogger(__name__)


# what each field's annotation accepts, and how to say it (a recipe's `ema = "false"` is a string, and true)
_KINDS: dict[str, tuple[Any, str, str]] = {
    "bool": (lambda v: isinstance(v, bool), "true or false", "write true or false, without quotes"),
    "int": (is_int, "a whole number", "write a whole number, such as 3"),
    "float": (is_number, "a number", "write a number, such as 0.1, without quotes"),
    "str": (lambda v: isinstance(v, str), "text", "write it in quotes"),
    "list[float]": (
        lambda v: isinstance(v, (list, tuple)) and all(is_number(x) for x in v),
        "a list of numbers",
        "write a list of numbers, such as [0.5, 1.0]",
    ),
}
SEED_MAX = 2**32 - 1  # numpy's seeds, and those of most tools (Lightning's seed_everything)


def _check_types(obj: Any) -> None:
    """Every field holds a value of its annotated type (``X | None``: None too), before any range check reads it."""
    for f in dataclasses.fields(obj):
        value, parts = getattr(obj, f.name), [p.strip() for p in str(f.type).split("|")]
        base = next(p for p in parts if p != "None")
        if value is None and "None" in parts:
            continue
        ok, kind, how = _KINDS[base]
        if not ok(value):
            hint = how + (", or leave it out" if "None" in parts else "")
            raise ConfigError(f"{{{f.name}}} = {value!r} is not {kind}", hint=hint)


class _Config:
    """to_dict / from_dict for the dataclasses below; unknown keys are an error, not silently dropped."""

    section: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], values: dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(
                f"unknown {cls.section} setting(s) {', '.join(unknown)}",
                hint=f"known settings: {', '.join(sorted(names))}",
            )
        return cls(**values)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class ModelConfig(_Config):
    """torchvision's MobileNetV2 with its width multiplier and any class count.

    ``small_input`` keeps more resolution for 28-64 px inputs: the stem convolution and the first 24-channel stage
    run at stride 1, so the total stride is 8 instead of 32 (a 28 px image ends at 4x4, not 1x1).
    ``stem_stride`` (1 or 2) overrides the stem's stride; None means 1 with ``small_input``, else 2 (torchvision's).
    ``small_input`` with ``stem_stride = 2`` has total stride 16 at a quarter of the compute (28 px ends at 2x2).
    ``output_stride`` (8, 16 or 32) lowers the total stride further by running the last stride-2 stages at stride 1
    (as DeepLab's ``output_stride`` does, without dilation): the deep layers keep a larger map at more compute.
    None means what ``small_input`` and ``stem_stride`` give.
    """

    section: ClassVar[str] = "model"

    num_classes: int = 20
    width_mult: float = 1.0
    dropout: float = 0.2
    small_input: bool = False
    stem_stride: int | None = None
    output_stride: int | None = None
    arch: str = "mobilenet_v2"

    def __post_init__(self) -> None:
        _check_types(self)
        check_choice("arch", self.arch, ("mobilenet_v2",))
        check_int("num_classes", self.num_classes, 2, 100_000, why=" (the classes of a classifier)")
        check_number("width_mult", self.width_mult, 0.35, 1.4)
        check_number("dropout", self.dropout, 0.0, 0.95)
        if self.stem_stride not in (None, 1, 2):
            raise ConfigError(
                f"{{stem_stride}} = {self.stem_stride!r} is invalid",
                hint="use 1, 2, or leave it out (1 with {small_input}, else 2)",
            )
        natural = self.effective_stem_stride * (8 if self.small_input else 16)  # 3 or 4 stride-2 stages after the stem
        if self.output_stride is not None and not (
            self.output_stride in (8, 16, 32) and self.effective_stem_stride <= self.output_stride <= natural
        ):
            raise ConfigError(
                f"{{output_stride}} = {self.output_stride!r} is invalid here",
                hint=f"use 8, 16 or 32, at most {natural} (the stride this stem and {{small_input}} give), or leave it out",
            )

    @property
    def effective_stem_stride(self) -> int:
        if self.stem_stride is not None:
            return self.stem_stride
        return 1 if self.small_input else 2


@dataclass(frozen=True)
class DataConfig(_Config):
    """Where the images come from and how they become tensors (stored in every checkpoint and artifact).

    ``source`` is ``synth``, ``fashion-mnist`` or a folder in ImageFolder layout (``train/<class>/``, ``val/<class>/``),
    or of class folders alone (``<class>/``) split by ``val_split``.
    Validation preprocessing: resize the shorter side to ``resize`` (see there), centre-crop ``img_size``, scale to [0, 1],
    normalise with ``mean`` / ``std``. Images are always converted to RGB first; with ``exif_orientation``, turned
    upright as their EXIF orientation tag says (phone photos), by every reader of the model alike.
    """

    section: ClassVar[str] = "data"

    source: str = "synth"
    data_dir: str | None = None
    img_size: int = 224
    resize_size: int | None = None
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    interpolation: str = "bilinear"
    train_aug: str = "rrc"
    rrc_scale: list[float] = field(default_factory=lambda: [0.25, 1.0])
    pad: int = 4
    hflip: bool = True
    # after the crop and flip of train_aug (training only): one of AUTO_AUGMENTATIONS, then Random Erasing with this
    # probability (a rectangle of each normalised image set to 0, the mean)
    auto_augment: str = "none"
    random_erase: float = 0.0
    class_index: str | None = None
    # a folder of class folders without train/ and val/: the share of each class's images held out for validation
    # (chosen by a hash of each file's path: see data/folder.py, split_classes); 0: the folder must hold train/ and val/
    val_split: float = 0.0
    # decode images upright as their EXIF orientation tag says (phone photos stored sideways); off: the pixels as stored
    exif_orientation: bool = False
    # the built-in synthetic set
    synth_classes: int = 10
    synth_train_per_class: int = 200
    synth_val_per_class: int = 50
    synth_seed: int = 0

    def __post_init__(self) -> None:
        _check_types(self)
        if self.source == "":
            raise ConfigError("{source} is empty", hint="pass {source} synth, fashion-mnist or a folder")
        check_int("img_size", self.img_size, 16, 1024, why=" (pixels)")
        if self.resize_size is not None:
            check_int("resize_size", self.resize_size, self.img_size, 4 * self.img_size, why=" ({img_size} to 4x it)")
        self._check_normalisation()
        self._check_augmentation()
        self._check_source_settings()
        check_int("synth_classes", self.synth_classes, 2, 64)
        check_int("synth_train_per_class", self.synth_train_per_class, 1, 100_000)
        check_int("synth_val_per_class", self.synth_val_per_class, 1, 100_000)
        check_int("synth_seed", self.synth_seed, 0, SEED_MAX)

    def _check_normalisation(self) -> None:
        """``mean`` and ``std``: three finite numbers each (stored as floats), ``std`` positive."""
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not (len(values) == 3 and all(math.isfinite(v) for v in values)):
                raise ConfigError(
                    f"{{{name}}} must have 3 finite numbers (R, G, B), got {values!r}", hint=f"pass {{{name}}} as R,G,B"
                )
            object.__setattr__(self, name, [float(v) for v in values])
        if not all(s > 0 for s in self.std):
            raise ConfigError(f"{{std}} must be positive, got {self.std}", hint="pass positive numbers")

    def _check_augmentation(self) -> None:
        check_choice("interpolation", self.interpolation, INTERPOLATIONS)
        check_choice("train_aug", self.train_aug, TRAIN_AUGMENTATIONS)
        check_choice("auto_augment", self.auto_augment, AUTO_AUGMENTATIONS)
        check_number("random_erase", self.random_erase, 0.0, 1.0)
        if not (len(self.rrc_scale) == 2 and 0 < self.rrc_scale[0] <= self.rrc_scale[1] <= 1):
            raise ConfigError(
                f"{{rrc_scale}} = {self.rrc_scale!r} is invalid", hint="use two numbers 0 < min <= max <= 1"
            )
        object.__setattr__(self, "rrc_scale", [float(v) for v in self.rrc_scale])
        check_int("pad", self.pad, 0, self.img_size // 2, why=" (half {img_size} at most)")

    def _check_source_settings(self) -> None:
        """The settings for a folder of images only: refused with a built-in source."""
        check_number("val_split", self.val_split, 0.0, 0.5)
        if self.val_split != 0 and self.source in BUILTIN_SOURCES:
            raise ConfigError(
                f"{{val_split}} = {self.val_split!r} is for a folder of class folders",
                hint=f"{self.source} has its own validation split: leave {{val_split}} out",
            )
        if self.exif_orientation and self.source in BUILTIN_SOURCES:
            raise ConfigError(
                "{exif_orientation} is for image files",
                hint=f"{self.source} is generated or read from arrays, with no EXIF tags: leave {{exif_orientation}} out",
            )

    @property
    def resize(self) -> int:
        """Validation resize of the shorter side: ``resize_size``, else the usual 0.875 crop ratio (256 for 224);
        images of 64 px and less are not resized beyond the crop."""
        if self.resize_size is not None:
            return self.resize_size
        return self.img_size if self.img_size <= 64 else int(math.floor(self.img_size / 0.875))

    @property
    def is_builtin(self) -> bool:
        return self.source in BUILTIN_SOURCES


@dataclass(frozen=True)
class TrainConfig(_Config):
    section: ClassVar[str] = "train"

    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-5
    depthwise_weight_decay: float | None = None  # the depthwise convolutions' weights; None: weight_decay
    warmup_epochs: float = 1.0
    schedule: str = "cosine"  # after the warm-up, the rate falls to zero by the last step: cosine or linear
    label_smoothing: float = 0.1
    # batch mixing (torchvision's v2.MixUp / v2.CutMix; both > 0: one of the two per batch, at even odds): the Beta
    # distribution's alpha, 0 off
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    clip_grad_norm: float | None = (
        None  # the gradients' total L2 norm is scaled down to at most this; None: no clipping
    )
    ema: bool = False
    ema_decay: float = 0.999
    amp: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    device: str = "auto"
    seed: int = 0
    workers: int = 2
    threads: int = 0  # CPU: intra-op threads for the training process; 0 leaves torch's default (one per core)
    sync_bn: bool = False
    init_from: str | None = None
    zero_init_residual: bool = False  # a fresh model's residual blocks start as identity (last BatchNorm scale 0)
    # fine-tuning: the first N of the model's 19 feature blocks keep the --init-from weights and BatchNorm statistics
    # (19: all of them, a linear probe of the classifier); 0 trains every layer
    freeze_blocks: int = 0
    out: str | None = None  # the run folder; None: weights/<source>-<time>
    plots: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        _check_types(self)
        check_int("seed", self.seed, 0, SEED_MAX)
        check_int("epochs", self.epochs, 1, 100_000)
        check_int("batch_size", self.batch_size, 2, 65_536, why=" (BatchNorm trains on 2 images or more)")
        check_int("workers", self.workers, 0, 256)
        check_int("threads", self.threads, 0, 1024)
        self._check_optimizer()
        check_int(
            "freeze_blocks",
            self.freeze_blocks,
            0,
            FEATURE_BLOCKS,
            why=f" (the feature blocks of MobileNetV2; {FEATURE_BLOCKS}: all, the classifier alone trains)",
        )
        if self.freeze_blocks and self.init_from is None:
            raise ConfigError(
                "{freeze_blocks} keeps the starting weights, and none are given",
                hint="pass {init_from} with pretrained weights (frozen random weights would stay random)",
            )
        check_number("mixup_alpha", self.mixup_alpha, 0.0, 10.0)
        check_number("cutmix_alpha", self.cutmix_alpha, 0.0, 10.0)
        if self.clip_grad_norm is not None:
            check_number("clip_grad_norm", self.clip_grad_norm, 0.0, 1e6, lo_open=True)
        check_number("ema_decay", self.ema_decay, 0.0, 0.99999, lo_open=True)
        check_choice("amp", self.amp, ("auto", "off", "bf16", "fp16"))
        check_choice("channels_last", self.channels_last, ("auto", "on", "off"))
        check_choice("device", self.device, ("auto", "cuda", "cpu"))

    def _check_optimizer(self) -> None:
        """The optimizer's settings and the learning-rate schedule's."""
        check_number("lr", self.lr, 0.0, 10.0, lo_open=True)
        check_number("momentum", self.momentum, 0.0, 0.999)
        check_number("weight_decay", self.weight_decay, 0.0, 1.0)
        if self.depthwise_weight_decay is not None:
            check_number("depthwise_weight_decay", self.depthwise_weight_decay, 0.0, 1.0)
        check_number("warmup_epochs", self.warmup_epochs, 0.0, float(self.epochs))
        check_number("label_smoothing", self.label_smoothing, 0.0, 0.5)
        check_choice("optimizer", self.optimizer, ("sgd", "adamw"))
        check_choice("schedule", self.schedule, ("cosine", "linear"))


@dataclass(frozen=True)
class RunConfig:
    """The three sections together, as a recipe file and ``config.json`` hold them."""

    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    # a recipe's own values, as its file gives them (load_recipe): the data source's defaults go under them
    given: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "data": self.data.to_dict(), "train": self.train.to_dict()}

    def training_extras(self) -> list[str]:
        """The optional augmentations, batch mixing, clipping and freezing this run trains with, in words (none: [])."""
        d, t = self.data, self.train
        items = [f"auto-augment {d.auto_augment}"] if d.auto_augment != "none" else []
        items += [f"random erasing p={d.random_erase:g}"] if d.random_erase > 0 else []
        items += [f"MixUp alpha {t.mixup_alpha:g}"] if t.mixup_alpha > 0 else []
        items += [f"CutMix alpha {t.cutmix_alpha:g}"] if t.cutmix_alpha > 0 else []
        items += [f"gradients clipped to norm {t.clip_grad_norm:g}"] if t.clip_grad_norm is not None else []
        items += [f"the first {t.freeze_blocks} feature blocks frozen"] if t.freeze_blocks > 0 else []
        return items

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        unknown = sorted(set(values) - {"model", "data", "train"})
        if unknown:
            raise ConfigError(
                f"unknown section(s) {', '.join(unknown)}", hint="a recipe has [model], [data] and [train] sections"
            )
        for section in ("model", "data", "train"):
            if not isinstance(values.get(section, {}), dict):
                raise ConfigError(
                    f"{section} = {values.get(section)!r} is not a section",
                    hint=f"write [{section}] on a line of its own, its settings below it",
                )
        return cls(
            model=ModelConfig.from_dict(values.get("model", {})),
            data=DataConfig.from_dict(values.get("data", {})),
            train=TrainConfig.from_dict(values.get("train", {})),
        )

    def with_absolute_paths(self) -> RunConfig:
        """The data folder, ``data_dir``, ``class_index`` and ``init_from`` as absolute paths: a checkpoint records where
        its data is, and ``export`` / ``check`` run from another directory find it there (they read it for calibration
        and accuracy). Built-in sources and unset paths are kept."""

        def absolute(path: str | None) -> str | None:
            return os.path.abspath(path) if path else path

        d = self.data
        data = d.replace(
            source=d.source if d.is_builtin else absolute(d.source),
            data_dir=absolute(d.data_dir),
            class_index=absolute(d.class_index),
        )
        return RunConfig(self.model, data, self.train.replace(init_from=absolute(self.train.init_from)), self.given)

    def with_classes(self, n: int) -> RunConfig:
        """This configuration for data of ``n`` classes: the data decides the class count."""
        return (
            self if n == self.model.num_classes else RunConfig(self.model.replace(num_classes=n), self.data, self.train)
        )

    def override(self, model: dict[str, Any], data: dict[str, Any], train: dict[str, Any]) -> RunConfig:
        """Apply explicit flags (only those given, i.e. not None) over the recipe's values."""

        def given(d: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in d.items() if v is not None}

        return RunConfig(
            model=ModelConfig.from_dict({**self.model.to_dict(), **given(model)}),
            data=DataConfig.from_dict({**self.data.to_dict(), **given(data)}),
            train=TrainConfig.from_dict({**self.train.to_dict(), **given(train)}),
        )


# Defaults that depend on the data source (applied under a recipe's values and explicit flags).
SOURCE_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "synth": {"data": {"img_size": 64, "rrc_scale": [0.5, 1.0]}, "model": {}},
    "fashion-mnist": {
        "data": {"img_size": 28, "mean": [0.2860] * 3, "std": [0.3530] * 3, "train_aug": "crop_pad", "pad": 2},
        "model": {"small_input": True},
    },
}


def run_config(
    recipe: RunConfig | None,
    model: dict[str, Any],
    data: dict[str, Any],
    train: dict[str, Any],
    recipe_path: str | Path | None = None,
) -> RunConfig:
    """Resolve a run's settings: explicit flags (non-None) over the recipe, over the data source's defaults. An error
    that the recipe's values cause (alone or with a flag) names ``recipe_path`` and says a flag overrides them; an
    error in a flag's own value does not blame the recipe."""
    source = data.get("source") or _recipe_source(recipe)
    if not source:
        raise ConfigError(
            "no data given",
            path=recipe_path if recipe is not None else None,
            hint="pass {source}: synth, fashion-mnist or a folder"
            + (", or set source in the recipe's [data]" if recipe is not None else ", or a recipe"),
        )
    base = recipe or RunConfig(ModelConfig(), DataConfig(source=source), TrainConfig())
    if recipe is None or recipe.given is not None:
        extra = SOURCE_DEFAULTS.get(source, {"model": {}, "data": {}})
        defaults = RunConfig(ModelConfig(), DataConfig(source=source), TrainConfig())
        base = defaults.override(extra["model"], {**extra["data"], "source": source}, {})
        if recipe is not None:  # the recipe's own values over the source's defaults (and the flags over both, below)
            g = recipe.given
            try:
                base = base.override(g.get("model", {}), {**g.get("data", {}), "source": source}, g.get("train", {}))
            except ConfigError as exc:
                raise ConfigError(exc.what, path=exc.path or recipe_path, hint=exc.hint) from None
    if recipe is not None and data.get("img_size") is not None and data.get("resize_size") is None:
        # a recipe's validation resize belongs to its own image size: another size derives its own (0.875 ratio)
        base = RunConfig(base.model, base.data.replace(resize_size=None), base.train)
    try:
        cfg = base.override(model, data, train)
    except ConfigError as exc:
        if recipe is None or _flags_alone_fail(exc, model, {**data, "source": source}, train):
            raise
        raise ConfigError(
            exc.what,
            path=exc.path or recipe_path,
            hint=f"{exc.hint} (the recipe's value applies unless its flag overrides it)",
        ) from None
    d, unused = cfg.data, {}
    if d.class_index and d.is_builtin:
        unused["class_index"] = "a data folder"
    if d.data_dir and d.source == "synth":
        unused["data_dir"] = "fashion-mnist"
    for name, used_with in unused.items():  # a recipe's, under --data synth for a quick try: said, not an error
        log.warning("%s = %r is not used with --data %s (only with %s)", name, getattr(d, name), d.source, used_with)
    return cfg


def _recipe_source(recipe: RunConfig | None) -> str | None:
    """The data source a recipe names; None where it names none (its dataclass default is not a choice it made)."""
    if recipe is None:
        return None
    if recipe.given is not None:
        return recipe.given.get("data", {}).get("source")
    return recipe.data.source


def _flags_alone_fail(exc: ConfigError, model: dict[str, Any], data: dict[str, Any], train: dict[str, Any]) -> bool:
    """Whether the flags give the same error without the recipe: then a flag is wrong, not the recipe."""
    try:
        run_config(None, model, data, train)
    except ConfigError as alone:
        return alone.what == exc.what
    return False


def load_recipe(path: str | Path) -> RunConfig:
    """Read a recipe (TOML with [model], [data] and [train] tables)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("recipe file not found", path=p, hint="pass a TOML file such as train/fashion_mnist_cpu.toml")
    try:
        values = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"recipe is not valid TOML: {exc}", path=p, hint="fix the file's syntax") from None
    try:
        return dataclasses.replace(RunConfig.from_dict(values), given=values)
    except ConfigError as exc:
        raise ConfigError(exc.what, path=p, hint=exc.hint) from None
