import pytest

from mnv2export.config import DataConfig, ModelConfig, RunConfig, TrainConfig, load_recipe, run_config
from mnv2export.errors import ConfigError


@pytest.mark.parametrize(
    "make",
    [
        lambda: ModelConfig(width_mult=0.2),
        lambda: ModelConfig(width_mult=1.5),
        lambda: ModelConfig(num_classes=1),
        lambda: ModelConfig(dropout=1.0),
        lambda: ModelConfig(arch="resnet50"),
        lambda: DataConfig(img_size=8),
        lambda: DataConfig(img_size=4096),
        lambda: DataConfig(mean=[0.5, 0.5]),
        lambda: DataConfig(std=[0.2, 0.0, 0.2]),
        lambda: DataConfig(interpolation="lanczos"),
        lambda: DataConfig(img_size=64, resize_size=32),
        lambda: TrainConfig(epochs=0),
        lambda: TrainConfig(epochs=-3),
        lambda: TrainConfig(batch_size=0),
        lambda: TrainConfig(batch_size=1),  # BatchNorm cannot train on one image (1x1 maps: an error mid-epoch)
        lambda: TrainConfig(lr=0.0),
        lambda: TrainConfig(lr=float("nan")),
        lambda: TrainConfig(lr=-1e-3),
        lambda: TrainConfig(optimizer="lbfgs"),
        lambda: TrainConfig(device="tpu"),
        lambda: TrainConfig(epochs=2, warmup_epochs=3),
    ],
)
def test_out_of_range_values_are_config_errors(make):
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.hint  # every error says what to do


def test_round_trip_and_unknown_keys():
    cfg = RunConfig(ModelConfig(num_classes=7, width_mult=0.5), DataConfig(img_size=96), TrainConfig(epochs=3))
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert DataConfig(img_size=224).resize == 256 and DataConfig(img_size=224).replace(img_size=64).resize == 64
    with pytest.raises(ConfigError, match="widht"):
        ModelConfig.from_dict({"widht": 0.5})


def test_run_config_precedence(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[model]\nwidth_mult = 0.5\n[data]\nsource = "synth"\nimg_size = 48\n[train]\nepochs = 7\nlr = 0.1\n'
    )
    cfg = run_config(load_recipe(recipe), {"width_mult": None}, {"img_size": 40}, {"lr": 0.01, "epochs": None})
    assert (cfg.model.width_mult, cfg.data.img_size, cfg.train.epochs, cfg.train.lr) == (0.5, 40, 7, 0.01)
    # without a recipe, the data source's own defaults apply under the flags
    fm = run_config(None, {}, {"source": "fashion-mnist"}, {})
    assert fm.data.img_size == 28 and fm.model.small_input and fm.data.mean == [0.2860] * 3
    with pytest.raises(ConfigError, match="no data"):
        run_config(None, {}, {}, {})


def test_the_data_sources_defaults_go_under_a_recipe(tmp_path):
    """README: flag, then recipe, then the data source's defaults. A recipe that set neither size nor augmentation
    trained synth at 224 px with ImageNet's rrc scale (the general defaults), Fashion-MNIST without its small input."""
    recipe = tmp_path / "r.toml"
    recipe.write_text("[model]\nwidth_mult = 0.35\n[data]\nhflip = false\n[train]\nepochs = 1\nbatch_size = 8\n")
    synth = run_config(load_recipe(recipe), {}, {"source": "synth"}, {})
    assert (
        synth.data.img_size,
        synth.data.rrc_scale,
        synth.data.hflip,
        synth.model.width_mult,
        synth.train.epochs,
    ) == (64, [0.5, 1.0], False, 0.35, 1)
    fm = run_config(load_recipe(recipe), {}, {"source": "fashion-mnist"}, {"epochs": 3})
    assert fm.data.img_size == 28 and fm.model.small_input and fm.data.train_aug == "crop_pad" and fm.train.epochs == 3
    recipe.write_text(
        '[data]\nsource = "fashion-mnist"\nimg_size = 32\n[model]\nsmall_input = false\n'
    )  # the recipe over the source
    own = run_config(load_recipe(recipe), {}, {}, {})
    assert own.data.img_size == 32 and not own.model.small_input and own.data.mean == [0.2860] * 3


def test_bad_recipes(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nwidth = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_recipe(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("[train]\nepoch = 3\n")
    with pytest.raises(ConfigError, match="epoch") as info:
        load_recipe(typo)
    assert info.value.path == str(typo)


def test_bounds_are_inclusive_where_documented():
    assert ModelConfig(width_mult=1.4).width_mult == 1.4 and ModelConfig(width_mult=0.35).width_mult == 0.35
    assert ModelConfig(dropout=0.95).dropout == 0.95 and TrainConfig(momentum=0.999).momentum == 0.999
    assert TrainConfig(batch_size=2).batch_size == 2


@pytest.mark.parametrize(
    "make",
    [
        lambda c: c.DataConfig(img_size=64, resize_size=257),
        lambda c: c.DataConfig(img_size=64, pad=33),
        lambda c: c.DataConfig(rrc_scale=[0.0, 1.0]),
        lambda c: c.DataConfig(rrc_scale=[0.8, 0.5]),
        lambda c: c.DataConfig(rrc_scale=[0.5, 1.5]),
        lambda c: c.TrainConfig(momentum=1.0),
        lambda c: c.TrainConfig(ema_decay=0.0),
        lambda c: c.TrainConfig(ema_decay=1.0),
        lambda c: c.ModelConfig(dropout=-0.1),
        lambda c: c.DataConfig(mean=[float("nan"), 0.5, 0.5]),
        lambda c: c.DataConfig(std=[float("inf"), 0.2, 0.2]),  # would normalise every image to 0
        lambda c: c.DataConfig(mean=[True, 0.5, 0.5]),
    ],
)
def test_more_out_of_range_values(make):
    from mnv2export import config

    with pytest.raises(ConfigError) as info:
        make(config)
    assert info.value.hint


def test_another_image_size_derives_its_own_resize_over_a_recipe(tmp_path):
    """The imagenet20 recipe's resize_size = 256 belongs to its 224 px: --img-size 64 must not resize to 256 and crop
    the central 64 px (a quarter of the width); an explicit resize flag still wins."""
    recipe = load_recipe("train/imagenet20_224.toml")
    assert recipe.data.resize == 256
    assert run_config(recipe, {}, {"img_size": 64}, {}).data.resize == 64
    assert run_config(recipe, {}, {"img_size": 160}, {}).data.resize == 182
    assert run_config(recipe, {}, {"img_size": 160, "resize_size": 200}, {}).data.resize == 200
    assert run_config(recipe, {}, {}, {"epochs": 90}).data.resize == 256  # the recipe's own size keeps its resize


def test_a_recipe_value_out_of_range_says_where_it_comes_from():
    recipe = load_recipe("train/imagenet20_224.toml")  # warmup_epochs = 3.0
    with pytest.raises(ConfigError, match="warmup_epochs = 3.0") as info:
        run_config(recipe, {}, {}, {"epochs": 2})
    assert "the recipe's value applies unless its flag overrides it" in info.value.hint
    with pytest.raises(ConfigError) as plain:
        run_config(None, {}, {"source": "synth"}, {"epochs": 2, "warmup_epochs": 3.0})
    assert "recipe" not in plain.value.hint
    with pytest.raises(ConfigError) as named:
        run_config(recipe, {}, {}, {"epochs": 2}, recipe_path="r.toml")
    assert str(named.value.path) == "r.toml"
    for model, data, train in (
        ({"width_mult": 5.0}, {}, {}),
        ({}, {}, {"batch_size": 1}),
        ({}, {"img_size": 32, "resize_size": 10}, {}),
    ):
        with pytest.raises(ConfigError) as flag:  # the flag's own value is wrong: the recipe is not blamed
            run_config(recipe, model, data, train, recipe_path="r.toml")
        assert flag.value.path is None and "recipe" not in flag.value.hint, flag.value


def test_list_options_refuse_an_empty_item():
    """`--format onnx,,torchscript`, `--provider cpu,` (a typo) are errors, as `--batch 1,,2` is, not silently read as
    fewer items; used by export's formats, check's providers and bench's formats and providers."""
    from mnv2export.check import parse_providers
    from mnv2export.export import parse_formats
    from mnv2export.params import choose, split_items

    assert split_items(" ONNX, torchscript ", "x") == ["onnx", "torchscript"] and split_items("", "x") == []
    for call in (
        lambda: parse_formats("onnx,,torchscript"),
        lambda: parse_providers("cpu,"),
        lambda: choose("eager,,onnx", ("eager", "onnx"), "formats"),
        lambda: split_items(["a", ""], "x"),
    ):
        with pytest.raises(ConfigError, match="empty item"):
            call()


@pytest.mark.parametrize(
    "section, values, message",
    [
        ("train", {"ema": "false"}, "{ema} = 'false' is not true or false"),  # a non-empty string: was read as true
        ("train", {"compile": "no"}, "{compile} = 'no' is not true or false"),
        ("data", {"hflip": "no"}, "{hflip} = 'no' is not true or false"),
        ("model", {"small_input": 1}, "{small_input} = 1 is not true or false"),
        ("train", {"seed": 1.5}, "{seed} = 1.5 is not a whole number"),
        ("train", {"seed": 10**20}, "{seed} = 100000000000000000000 is out of range"),
        ("train", {"seed": -1}, "{seed} = -1 is out of range"),
        ("data", {"synth_seed": -1}, "{synth_seed} = -1 is out of range"),
        ("data", {"synth_classes": 2.5}, "{synth_classes} = 2.5 is not a whole number"),
        ("data", {"pad": 2.5}, "{pad} = 2.5 is not a whole number"),
        ("data", {"rrc_scale": [0.5, "a"]}, "{rrc_scale} = [0.5, 'a'] is not a list of numbers"),
        ("data", {"class_index": 5}, "{class_index} = 5 is not text"),
        ("train", {"out": 5}, "{out} = 5 is not text"),
        ("train", {"init_from": 5}, "{init_from} = 5 is not text"),
        ("train", {"lr": "0.1"}, "{lr} = '0.1' is not a number"),
        ("model", {"stem_stride": 1.0}, "{stem_stride} = 1.0 is not a whole number"),
    ],
)
def test_a_recipe_value_of_the_wrong_type_is_an_error(tmp_path, section, values, message):
    """TOML has types: `ema = "false"` is a string, which Python reads as true (torch.compile ran for `compile =
    "false"`); `seed = 1.5` crashed numpy. Each is a one-line error naming the setting, from a recipe or anywhere."""
    import tomllib

    recipe = tmp_path / "r.toml"
    body = "\n".join(
        f"{k} = {v!r}".replace("'", '"') if not isinstance(v, list) else f"{k} = {str(v).replace(chr(39), chr(34))}"
        for k, v in values.items()
    )
    recipe.write_text('[data]\nsource = "synth"\n' + (f"[{section}]\n{body}\n" if section != "data" else f"{body}\n"))
    assert tomllib.loads(recipe.read_text())[section] == {
        **({"source": "synth"} if section == "data" else {}),
        **values,
    }
    with pytest.raises(ConfigError) as info:
        run_config(load_recipe(recipe), {}, {}, {})
    assert info.value.what == message and info.value.hint


def test_whole_numbers_are_numbers_and_a_section_must_be_a_table(tmp_path):
    assert TrainConfig(lr=1).lr == 1 and ModelConfig(width_mult=1).width_mult == 1  # `lr = 1` in TOML is an int
    with pytest.raises(ConfigError, match="model = 3 is not a section"):
        RunConfig.from_dict({"model": 3})


def test_a_recipe_without_a_data_source_needs_data(tmp_path):
    """A recipe naming no source trained on synth without a word (the dataclass default)."""
    recipe = tmp_path / "r.toml"
    recipe.write_text("[train]\nepochs = 2\n")
    with pytest.raises(ConfigError, match="no data given") as info:
        run_config(load_recipe(recipe), {}, {}, {}, recipe_path=recipe)
    assert "source in the recipe" in info.value.hint and info.value.path == str(recipe)
    assert run_config(load_recipe(recipe), {}, {"source": "synth"}, {}).train.epochs == 2


def test_settings_a_built_in_source_does_not_use_are_warned_about(caplog):
    """`--class-index` and `--data-dir` with `--data synth` were ignored without a word."""
    import logging

    with caplog.at_level(logging.WARNING, logger="mnv2export"):
        run_config(None, {}, {"source": "synth", "class_index": "idx.json", "data_dir": "/data/fm"}, {})
    assert "class_index = 'idx.json' is not used with --data synth (only with a data folder)" in caplog.text
    assert "data_dir = '/data/fm' is not used with --data synth (only with fashion-mnist)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mnv2export"):
        run_config(None, {}, {"source": "fashion-mnist", "data_dir": "/data/fm"}, {})
        run_config(None, {}, {"source": "some/folder", "class_index": "idx.json"}, {})
    assert caplog.text == ""
