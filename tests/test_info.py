"""mnv2 info: published MobileNetV2 numbers, folded parameter counts of exported files, quantized nodes of INT8."""

from __future__ import annotations

import json
import re

import pytest
from torch import nn

from mnv2export.cli import main
from mnv2export.info import describe


@pytest.fixture(scope="module")
def imagenet_checkpoint(tmp_path_factory):
    """MobileNetV2 1.0, 224 px, 1000 classes (torchvision's ImageNet shape; random weights, counts do not depend on them)."""
    import torch

    from mnv2export.checkpoint import Checkpoint, provenance, save_checkpoint
    from mnv2export.config import DataConfig, ModelConfig
    from mnv2export.model import build_model

    torch.manual_seed(0)
    model_cfg = ModelConfig(num_classes=1000, width_mult=1.0)
    model = build_model(model_cfg)
    ckpt = Checkpoint(
        model_config=model_cfg,
        data_config=DataConfig(source="synth", img_size=224),
        class_names=[f"c{i}" for i in range(1000)],
        state_dict=model.state_dict(),
        provenance=provenance(None),
    )
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("imagenet") / "best.pt")


def test_mobilenet_v2_published_numbers(imagenet_checkpoint):
    info = describe(imagenet_checkpoint)
    assert info.format == "pytorch" and info.model.input_size == [3, 224, 224]
    assert info.params == info.model.params == 3_504_872  # torchvision's documented count for mobilenet_v2
    assert abs(info.model.macs - 300e6) / 300e6 < 0.03  # ~300M multiply-adds (torchvision: 0.30 GFLOPS, i.e. GMACs)
    assert sum(b.params for b in info.model.blocks) == info.params
    assert sum(row.params for row in info.model.layers) == info.params
    assert sum(b.macs for b in info.model.blocks) == info.model.macs
    assert [b.name for b in info.model.blocks] == [f"features.{i}" for i in range(19)] + ["classifier"]
    last = info.model.layers[-1]
    assert (last.name, last.type, last.output_shape, last.params) == ("classifier.1", "Linear", [1, 1000], 1281 * 1000)
    assert info.model.blocks[18].output_shape == [1, 1280, 7, 7]


def test_exported_files_count_the_folded_parameters(trained_checkpoint, exported, capsys):
    """Exported files hold BatchNorm folded: one bias per BatchNorm channel instead of its scale and shift. `mnv2 info
    model.onnx` showed two counts (the file's folded one, and the unfolded network's in the block table) and listed
    BatchNorm layers the file does not have: now one count, the folded network's, and no BatchNorm layer."""
    from mnv2export.checkpoint import load_checkpoint

    model = load_checkpoint(trained_checkpoint).build_model()
    folded = sum(p.numel() for p in model.parameters()) - sum(
        m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d)
    )
    source = describe(trained_checkpoint)
    assert any(row.type == "BatchNorm2d" for row in source.model.layers)  # the checkpoint has them, unfolded
    for name in ("model.torchscript.pt", "model.onnx", "model.int8.onnx", "model.fp16.onnx"):
        info = describe(exported.out_dir / name)
        assert info.params == info.model.params == folded, name  # one count
        assert sum(b.params for b in info.model.blocks) == sum(row.params for row in info.model.layers) == folded, name
        assert not [row.name for row in info.model.layers if "Norm" in row.type or row.type == "Identity"], name
        assert info.model.macs == source.model.macs, name  # the rebuilt network: folding changes no MAC
        assert info.file_size == (exported.out_dir / name).stat().st_size
        assert info.precision == exported.artifacts[name]["precision"]
    assert main(["info", str(exported.out_dir / "model.onnx")]) == 0
    text = capsys.readouterr().out
    assert "BatchNorm" not in text.split("layers")[-1]
    counts = re.findall(r"([\d,]+) parameters|parameters: ([\d,]+)", text)
    assert [int("".join(c).replace(",", "")) for c in counts] == [folded], text  # said once, the folded count


def test_onnx_graph_details_and_quantized_nodes(exported):
    fp32 = describe(exported.out_dir / "model.onnx")
    int8 = describe(exported.out_dir / "model.int8.onnx")
    for info in (fp32, int8):
        g = info.onnx
        assert info.format == "onnx" and g.opset == exported.artifacts["model.onnx"]["opset"]
        assert g.inputs == [{"name": "input", "dtype": "float", "shape": ["batch", 3, 32, 32]}]
        assert g.outputs == [{"name": "logits", "dtype": "float", "shape": ["batch", 4]}]
        assert info.metadata["class_names"] == [
            "00-circle-solid",
            "01-square-solid",
            "02-triangle-solid",
            "03-cross-solid",
        ]
    assert fp32.onnx.quantized_total == 0 and fp32.onnx.quant_param_elements == 0
    assert (
        int8.onnx.quantized_nodes.get("QuantizeLinear", 0) > 0
        and int8.onnx.quantized_nodes.get("DequantizeLinear", 0) > 0
    )
    assert int8.onnx.quantized_total == sum(
        n for op, n in int8.onnx.op_counts.items() if "quantize" in op.lower() or op.startswith("QLinear")
    )
    assert int8.onnx.quant_param_elements > 0
    # every Conv of the FP32 graph is still there, now fed by dequantized weights
    assert int8.onnx.op_counts.get("Conv") == fp32.onnx.op_counts.get("Conv")


def test_cli_table_and_json(exported, tmp_path, capsys):
    out = tmp_path / "info.json"
    code = main(["info", str(exported.out_dir / "model.int8.onnx"), "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    data = json.loads(out.read_text())
    assert f"quantized nodes: {data['onnx']['quantized_total']}" in text and data["onnx"]["quantized_total"] > 0
    assert "opset 18" in text and "input input: float [batch, 3, 32, 32]" in text
    assert "features.0.0" in text and "Conv2d" in text  # the per-layer table
    assert "MACs counted from the architecture" in text  # an exported file's: computed without torch
    assert (
        data["precision"] == "int8"
        and data["model"]["params"] == describe(exported.out_dir / "model.onnx").model.params
    )


def test_not_an_artifact_is_one_error_line(tmp_path, capsys):
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"\x00\x01 not a model")
    assert main(["info", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "weights.bin" in err[0]


def test_a_json_path_that_cannot_be_written_is_refused_before_the_report(exported, tmp_path, capsys):
    """`--json FOLDER` printed the whole report, then the error."""
    (tmp_path / "folder").mkdir()
    assert main(["info", str(exported.out_dir / "model.onnx"), "--json", str(tmp_path / "folder")]) == 1
    captured = capsys.readouterr()
    assert (
        captured.out == ""
        and captured.err.strip()
        == f"error: --json names a folder, not a file ({tmp_path / 'folder'}): give --json a file path"
    )


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        (
            "input_size",
            [3, 64, 64],
            "ONNX graph does not match its metadata: input shape ['batch', 3, 32, 32] (the metadata says N x 3 x 64 x 64)",
        ),
        (
            "input_name",
            "x",
            "ONNX graph does not match its metadata: inputs ['input'] (the metadata says one named 'x')",
        ),
        (
            "class_names",
            ["a", "b", "c"],
            "ONNX graph does not match its metadata: output shape ['batch', 4] (the metadata says N x 3)",
        ),
        (
            "input_size",
            [32, 32],
            "artifact metadata is not valid: input_size [32, 32] (expected [3, H, W], H and W whole numbers > 0)",
        ),
        ("std", [0.2, 0, 0.2], "artifact metadata is not valid: std [0.2, 0, 0.2] (expected 3 numbers, each > 0)"),
    ],
)
def test_info_checks_the_onnx_graph_against_its_metadata(exported, tmp_path, capsys, key, value, says):
    """`mnv2 info` read ONNX metadata without a look at the graph: an edited input_size gave wrong MACs and exit 0, a
    2-item input_size an unexpected RuntimeError. Now it checks the graph as load_artifact does, and names the field."""
    from test_check import _wrong_metadata

    from mnv2export.errors import ArtifactError
    from mnv2export.runtime import load_artifact

    edited = tmp_path / "m.onnx"
    _wrong_metadata(exported.out_dir / "model.onnx", edited, [key], value)
    if key == "class_names":  # num_classes stays 4: change both, as a hand edit that keeps them consistent would
        _wrong_metadata(edited, edited, ["num_classes"], 3)
    assert main(["info", str(edited)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: {says} ({edited}): export {'the model ' if 'graph' in says else 'it '}again with `mnv2 export`"
    ]
    with pytest.raises(ArtifactError, match=re_escape(says)):  # the runtime refuses it in the same words
        load_artifact(edited)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_info_refuses_metadata_whose_model_config_does_not_describe_the_weights(exported, tmp_path, capsys):
    """MACs and the block table come from the metadata's model_config: a config of another width gave another
    network's figures for the file, exit 0. The file's own weight count must be that config's, folded."""
    import torch

    from mnv2export.export.names import TORCHSCRIPT_METADATA

    extra = {TORCHSCRIPT_METADATA: ""}
    module = torch.jit.load(str(exported.out_dir / "model.torchscript.pt"), _extra_files=extra)
    meta = json.loads(extra[TORCHSCRIPT_METADATA])
    meta["model_config"]["width_mult"] = 0.5
    torch.jit.save(module, str(tmp_path / "m.torchscript.pt"), _extra_files={TORCHSCRIPT_METADATA: json.dumps(meta)})
    assert main(["info", str(tmp_path / "m.torchscript.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("error: the model_config in the file's metadata does not describe its weights (")
        and "m.torchscript.pt" in err
    )
    assert "export it again" in err


def test_a_torchscript_file_whose_input_name_differs_from_its_metadata_is_named(exported, tmp_path, capsys):
    """Exports before the name was set traced torchvision's forward(x) under metadata saying 'input': they still run
    (the runners pass the input by position), with a warning naming both; a forward of another arity is refused."""
    import torch

    from mnv2export.export.names import TORCHSCRIPT_METADATA

    extra = {TORCHSCRIPT_METADATA: ""}
    module = torch.jit.load(str(exported.out_dir / "model.torchscript.pt"), _extra_files=extra)
    meta = json.loads(extra[TORCHSCRIPT_METADATA])
    meta["input_name"] = "images"
    torch.jit.save(module, str(tmp_path / "m.torchscript.pt"), _extra_files={TORCHSCRIPT_METADATA: json.dumps(meta)})
    from PIL import Image

    Image.new("RGB", (40, 40), "red").save(tmp_path / "red.png")
    for command in (["info", "--no-layers"], ["predict", str(tmp_path / "red.png"), "--model"]):
        assert main([*command, str(tmp_path / "m.torchscript.pt")]) == 0
        assert (
            "forward's input is named 'input', its metadata says 'images' (an older export)" in capsys.readouterr().err
        )

    class TwoInputs(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a + b

    two = torch.jit.script(TwoInputs())
    torch.jit.save(two, str(tmp_path / "two.torchscript.pt"), _extra_files={TORCHSCRIPT_METADATA: json.dumps(meta)})
    assert main(["info", str(tmp_path / "two.torchscript.pt")]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: TorchScript program does not match its metadata: forward takes ['a', 'b'] (the metadata says one input named "
        f"'images') ({tmp_path / 'two.torchscript.pt'}): export the model again with `mnv2 export`"
    )


def test_an_export_of_an_untrained_checkpoint_is_described(tmp_path):
    """A last.pt of epoch 0 (a run stopped in its first epoch) has BatchNorm at its initial values: folded, every
    convolution's bias is all zeros, and both exporters leave such biases out. The check of the model_config against
    the file's weights compares the kernels only, so this real export is described, not refused as edited."""
    import torch
    from conftest import TRAINED_DATA

    from mnv2export.checkpoint import Checkpoint, provenance, save_checkpoint
    from mnv2export.config import DataConfig, ModelConfig
    from mnv2export.export import export_all
    from mnv2export.model import build_model

    torch.manual_seed(0)
    model_cfg = ModelConfig(num_classes=4, width_mult=0.35)
    ckpt = Checkpoint(
        model_config=model_cfg,
        data_config=DataConfig(**TRAINED_DATA),
        class_names=["a", "b", "c", "d"],
        state_dict=build_model(model_cfg).state_dict(),
        train_summary={"epoch": 0, "epochs": 2},
        provenance=provenance(None),
    )
    export_all(
        save_checkpoint(ckpt, tmp_path / "last.pt"), tmp_path / "export", quantize=True, fp16=True, calib_size=16
    )
    source = describe(tmp_path / "last.pt")
    for name in ("model.torchscript.pt", "model.onnx", "model.int8.onnx", "model.fp16.onnx"):
        info = describe(tmp_path / "export" / name)
        assert info.model.macs == source.model.macs and info.params < source.params, name


@pytest.mark.parametrize(
    "summary, line",
    [
        (
            {
                "epoch": 19,
                "epochs": 20,
                "best_val_acc": 0.9317,
                "best_epoch": 19,
                "final": {"epoch": 19, "val_acc": 0.9317},
            },
            "epoch 19 of 20, val top-1 93.17% (the run's best)",
        ),
        (
            {
                "epoch": 20,
                "epochs": 20,
                "best_val_acc": 0.9317,
                "best_epoch": 19,
                "final": {"epoch": 20, "val_acc": 0.931},
            },
            "epoch 20 of 20, val top-1 93.10% (the run's best: 93.17% at epoch 19)",
        ),
        ({"epoch": 0, "epochs": 2}, "epoch 0 of 2"),  # stopped in its first epoch: nothing scored yet
        (
            {"epoch": 3, "epochs": 5, "best_val_acc": 0.5, "best_epoch": 2, "final": {"epoch": 2, "val_acc": 0.5}},
            "epoch 3 of 5 (the run's best: 50.00% at epoch 2)",
        ),  # metrics of another epoch are not this one's
    ],
)
def test_the_training_line_says_which_epoch_the_weights_are_from_and_the_runs_best(summary, line):
    from mnv2export.cli.info_cmd import _training_line

    assert _training_line(summary) == line
