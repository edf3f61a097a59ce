"""`mnv2 export`: BatchNorm folding, every format's round trip, the manifest, INT8 / FP16 and every bad input."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from mnv2export.cli import main
from mnv2export.config import ModelConfig
from mnv2export.errors import ConfigError, DataError, ExportError, OutputError
from mnv2export.export import export_all, parse_formats
from mnv2export.export.opsets import max_opset, ort_max_opset
from mnv2export.export.quantize import int8_recipe, quantize_onnx
from mnv2export.fileio import sha256_file
from mnv2export.fold import check_fold, fold_bn
from mnv2export.layout import FP16_FILE, INT8_FILE, MANIFEST_FILE, ONNX_FILE, TORCHSCRIPT_FILE
from mnv2export.model import build_model
from mnv2export.runtime import load_artifact, read_metadata

ALL_FILES = (TORCHSCRIPT_FILE, ONNX_FILE, INT8_FILE, FP16_FILE, MANIFEST_FILE)


def _val_images(n: int = 64) -> np.ndarray:
    from conftest import TRAINED_DATA

    from mnv2export.config import DataConfig
    from mnv2export.data import build_datasets

    val = build_datasets(DataConfig(**TRAINED_DATA), augment=False).val
    return torch.stack([val[i][0] for i in range(min(n, len(val)))]).numpy()


def _bn_model(seed: int = 0) -> nn.Module:
    """A model whose BatchNorms are far from identity (statistics and affine parameters)."""
    g = torch.Generator().manual_seed(seed)
    m = build_model(ModelConfig(num_classes=5, width_mult=0.35, dropout=0.0))
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            mod.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
            mod.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return m.eval()


# ------------------------------------------------------------------------------------------------ folding
def test_fold_bn_removes_every_batchnorm_and_keeps_the_answers():
    model = _bn_model()
    folded = fold_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 52  # the original is untouched
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    diff = check_fold(model, folded, x)
    assert diff < 1e-4
    with torch.no_grad():
        assert model(x).abs().max() > 0.1  # the comparison is not between two near-zero outputs


def test_fold_check_and_unfoldable_models_are_errors():
    model = _bn_model()
    folded = fold_bn(model)
    with torch.no_grad():
        folded.features[18][0].weight.mul_(1.01)  # what a wrong fold of the last convolution would do
    with pytest.raises(ExportError, match="differs"):
        check_fold(model, folded, torch.randn(2, 3, 32, 32))
    lonely = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3))  # no convolution before the BatchNorm
    with pytest.raises(ExportError, match="could not be folded"):
        fold_bn(lonely)


# ------------------------------------------------------------------------------------------------ the export
def test_files_and_manifest(exported, trained_checkpoint):
    out = exported.out_dir
    assert sorted(p.name for p in out.iterdir()) == sorted(ALL_FILES)  # no temporary file left behind
    on_disk = json.loads((out / MANIFEST_FILE).read_text())
    assert on_disk == exported.data
    assert on_disk["source_checkpoint"]["sha256"] == sha256_file(trained_checkpoint)
    expected = {
        TORCHSCRIPT_FILE: ("torchscript", "fp32"),
        ONNX_FILE: ("onnx", "fp32"),
        INT8_FILE: ("onnx", "int8"),
        FP16_FILE: ("onnx", "fp16"),
    }
    assert set(on_disk["artifacts"]) == set(expected)
    for name, a in on_disk["artifacts"].items():
        assert (a["format"], a["precision"]) == expected[name]
        assert a["size_bytes"] == (out / name).stat().st_size
        assert a["sha256"] == sha256_file(out / name)
        assert a["input_shape"] == ["batch", 3, 32, 32]
        assert a["source_checkpoint_sha256"] == sha256_file(trained_checkpoint)
        assert a["opset"] == (None if name == TORCHSCRIPT_FILE else 18)
        assert a["export_settings"]
    q = on_disk["artifacts"][INT8_FILE]["export_settings"]
    assert (
        q["per_channel"] is True
        and q["format"] == "QDQ"
        and q["calibration_method"] == "minmax"
        and q["calibration_images"] == 96
    )
    assert on_disk["bn_fold"]["max_abs_diff"] < 1e-4
    run = on_disk["settings"]  # the export command's own settings, as given
    assert (run["quantize"], run["fp16"], run["opset"], run["calib_size"], run["calib_method"]) == (
        True,
        True,
        18,
        96,
        "minmax",
    )
    assert run["calib_data"] and set(run["formats"]) == {"torchscript", "onnx"}


def test_onnx_graph_has_no_batchnorm_named_io_and_passes_the_checker(exported):
    for name in (ONNX_FILE, INT8_FILE, FP16_FILE):
        model = onnx.load(str(exported.out_dir / name))
        onnx.checker.check_model(model, full_check=True)
        assert not [n for n in model.graph.node if n.op_type == "BatchNormalization"]
        assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]
        dims = model.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]
        assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # FP16 keeps float32 I/O
        assert not any(
            t.HasField("data_location") and t.data_location == onnx.TensorProto.EXTERNAL
            for t in model.graph.initializer
        )


@pytest.mark.parametrize("name", [TORCHSCRIPT_FILE, ONNX_FILE, INT8_FILE, FP16_FILE])
def test_dynamic_batch(exported, name):
    runner = load_artifact(exported.out_dir / name)
    for n in (1, 7, 64):
        x = np.random.default_rng(n).standard_normal((n, 3, 32, 32)).astype(np.float32)
        y = runner.run(x)
        assert y.shape == (n, 4) and y.dtype == np.float32 and np.isfinite(y).all()


def test_each_format_matches_pytorch(exported, trained_checkpoint):
    x = _val_images()
    ref = load_artifact(trained_checkpoint).run(x)  # the unfolded eager model
    scale = float(np.abs(ref).max())
    assert scale > 1.0
    top2 = np.sort(ref, axis=1)[:, -2:]
    for name, tol in ((TORCHSCRIPT_FILE, 1e-4), (ONNX_FILE, 1e-4), (FP16_FILE, 5e-3)):
        got = load_artifact(exported.out_dir / name).run(x)
        err = np.abs(got - ref).max()
        assert err <= tol * scale, name
        clear = top2[:, 1] - top2[:, 0] > 2 * err  # only a near tie (margin within the error) may flip
        assert clear.mean() >= 0.5 and (got.argmax(1) == ref.argmax(1))[clear].all(), name


def test_int8_agrees_with_fp32_on_a_trained_model(exported):
    x, labels = _val_images(), None
    from conftest import TRAINED_DATA

    labels = np.repeat(np.arange(4), TRAINED_DATA["synth_val_per_class"])[: len(x)]
    fp32 = load_artifact(exported.out_dir / ONNX_FILE).run(x).argmax(1)
    int8 = load_artifact(exported.out_dir / INT8_FILE).run(x).argmax(1)
    assert (fp32 == labels).mean() >= 0.8  # the model learned: the agreement below is not that of a constant
    assert len(set(fp32.tolist())) == 4
    assert (int8 == fp32).mean() >= 0.9


def test_int8_graph_is_qdq_per_channel_u8s8(exported):
    model = onnx.load(str(exported.out_dir / INT8_FILE))
    inits = {t.name: t for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    depthwise = 0
    assert len(convs) == 52 and "input" in convs[0].input  # the stem is fed by the graph input, in FP32
    assert (
        model.graph.initializer
        and next(t for t in model.graph.initializer if t.name == convs[0].input[1]).data_type == onnx.TensorProto.FLOAT
    )
    for conv in convs[1:]:  # every other convolution reads dequantized int8 weights, one scale per output channel
        dq = next(n for n in model.graph.node if n.output[0] == conv.input[1])
        assert dq.op_type == "DequantizeLinear"
        weight, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert weight.data_type == onnx.TensorProto.INT8 and scale.dims == [weight.dims[0]]  # one scale per channel
        depthwise += next((a.i for a in conv.attribute if a.name == "group"), 1) > 1
    assert depthwise == 17
    q_zero_points = {n.input[2] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    recipe = int8_recipe()
    want = onnx.TensorProto.UINT8 if recipe["activation_type"] == "uint8" else onnx.TensorProto.INT8
    assert q_zero_points and all(inits[z].data_type == want for z in q_zero_points)


def test_every_onnx_file_imports_only_the_operator_sets_its_nodes_use(exported):
    """ONNX Runtime's quantization pre-processing declares every domain ORT knows (com.microsoft.nchwc,
    ai.onnx.training, ...); the INT8 file must not carry them to runtimes that do not."""
    for name in (ONNX_FILE, INT8_FILE, FP16_FILE):
        model = onnx.load(str(exported.out_dir / name))
        declared = {o.domain for o in model.opset_import}
        assert declared - {""} <= {n.domain for n in model.graph.node}, (name, declared)
        assert "" in declared


def test_drop_unused_domains_keeps_what_nodes_subgraphs_and_functions_use():
    from onnx import TensorProto, helper

    from mnv2export.export.onnx import drop_unused_domains

    v = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    inner = helper.make_graph([helper.make_node("Gelu", ["x"], ["z"], domain="com.microsoft")], "then", [], [v[0]])
    node = helper.make_node("If", ["c"], ["y"], then_branch=inner, else_branch=inner)
    fn = helper.make_function(
        "my.fn", "F", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])], [helper.make_opsetid("", 18)]
    )
    model = helper.make_model(
        helper.make_graph([node], "g", [v[0]], [v[1]]),
        functions=[fn],
        opset_imports=[
            helper.make_opsetid(d, 1 if d else 18)
            for d in ("", "com.microsoft", "my.fn", "ai.onnx.ml", "com.microsoft.nchwc")
        ],
    )
    assert drop_unused_domains(model) == ["ai.onnx.ml", "com.microsoft.nchwc"]
    assert [o.domain for o in model.opset_import] == ["", "com.microsoft", "my.fn"]


def test_metadata_in_every_artifact(exported, trained_checkpoint):
    from mnv2export.checkpoint import load_checkpoint

    ckpt = load_checkpoint(trained_checkpoint)
    for name, precision in ((TORCHSCRIPT_FILE, "fp32"), (ONNX_FILE, "fp32"), (INT8_FILE, "int8"), (FP16_FILE, "fp16")):
        meta = read_metadata(exported.out_dir / name)
        assert meta["class_names"] == ckpt.class_names and meta["mean"] == ckpt.data_config.mean
        assert meta["input_size"] == [3, 32, 32] and meta["precision"] == precision
        assert meta["source_checkpoint_sha256"] == sha256_file(trained_checkpoint)
        pp = meta["preprocessing"]  # spelled out for a service without mnv2export (README; tested in test_predict)
        assert (
            pp["resize"]["size"] == ckpt.data_config.resize
            and pp["center_crop"] == [32, 32]
            and pp["std"] == ckpt.data_config.std
        )
    props = {p.key for p in onnx.load(str(exported.out_dir / ONNX_FILE)).metadata_props}
    assert "mnv2_metadata" in props
    assert read_metadata(exported.out_dir / INT8_FILE)["quantization"]["per_channel"] is True


def test_torchscript_loads_without_mnv2export_or_torchvision(exported):
    """Plain ``torch.jit.load`` in a fresh interpreter where neither package can be imported; called by the input name
    the metadata gives, as an ONNX session is."""
    code = (
        "import sys, json; sys.modules['mnv2export'] = None; sys.modules['torchvision'] = None\n"
        "import torch\n"
        "extra = {'mnv2_metadata.json': ''}\n"
        f"m = torch.jit.load({str(exported.out_dir / TORCHSCRIPT_FILE)!r}, _extra_files=extra)\n"
        "meta = json.loads(extra['mnv2_metadata.json'])\n"
        "y = m(**{meta['input_name']: torch.zeros(3, 3, 32, 32)})\n"  # the argument is named as the metadata says
        "print(json.dumps({'shape': list(y.shape), 'classes': meta['class_names'], 'schema': str(m.forward.schema)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["shape"] == [3, 4] and len(answer["classes"]) == 4
    assert "Tensor input) -> Tensor" in answer["schema"]  # as the ONNX graph's input


def test_torchscript_convolutions_read_torchs_flags_when_they_run(exported):
    """The written graph calls ``aten::conv2d`` (which reads torch's cuDNN and TF32 flags at run time), not the traced
    ``aten::_convolution`` with the tracing process's flags (allow_tf32=True) frozen in as constants; and
    ``optimize_for_inference`` still turns every convolution into a oneDNN one on the CPU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(exported.out_dir / TORCHSCRIPT_FILE), map_location="cpu")
    graph = module.graph
    convs = graph.findAllNodes("aten::conv2d")
    assert len(convs) == 52 and not graph.findAllNodes("aten::_convolution")  # MobileNetV2: 52 convolutions
    assert all(len(list(n.inputs())) == 7 for n in convs)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        optimized = torch.jit.optimize_for_inference(module)
        assert len(optimized.graph.findAllNodes("prim::mkldnn_convolution")) == 52
        assert torch.allclose(optimized(x), module(x), atol=1e-5)


def _convolution_graph():
    traced = torch.jit.trace(
        torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ConvTranspose2d(4, 2, 3)).eval(), torch.randn(1, 3, 8, 8)
    )
    return torch.jit.freeze(traced)


def test_only_plain_2d_convolutions_are_rewritten():
    from mnv2export.export.torchscript import _convolutions_follow_torch_flags

    frozen = _convolution_graph()
    x = torch.randn(1, 3, 8, 8)
    before = frozen(x)
    assert _convolutions_follow_torch_flags(frozen.graph) == 1  # the transposed one keeps its node
    assert (
        len(frozen.graph.findAllNodes("aten::conv2d")) == 1
        and len(frozen.graph.findAllNodes("aten::_convolution")) == 1
    )
    assert torch.equal(frozen(x), before)


def test_onnx_export_sees_out_of_place_activations_and_restores_them(tmp_path, monkeypatch):
    """The exporter gets ReLU6(inplace=False) (aten.hardtanh, written as Clip without the slow decomposition of the
    in-place op); the model's own modules are in place again afterwards, also when the exporter fails."""
    from mnv2export.export import onnx as onnx_export

    folded = fold_bn(build_model(ModelConfig(num_classes=3, width_mult=0.35)))
    relus = [m for m in folded.modules() if isinstance(m, nn.ReLU6)]
    assert len(relus) == 35 and all(m.inplace for m in relus)
    real_export, seen = torch.onnx.export, []

    def spy(model, *args, **kwargs):
        seen.append(sorted({m.inplace for m in model.modules() if isinstance(m, nn.ReLU6)}))
        return real_export(model, *args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", spy)
    written = onnx_export.export_onnx(folded, torch.randn(2, 3, 32, 32), {}, tmp_path / "m.onnx")
    assert seen == [[False]] and all(m.inplace for m in relus)
    ops = [n.op_type for n in written.graph.node]
    assert ops.count("Clip") == 35 and ops.count("Conv") == 52

    def broken(model, *args, **kwargs):
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(ExportError, match="exporter failed"):
        onnx_export.export_onnx(folded, torch.randn(2, 3, 32, 32), {}, tmp_path / "n.onnx")
    assert all(m.inplace for m in relus)


def test_int8_recipe_follows_the_cpu():
    assert int8_recipe({"avx2", "avx512f", "avx512_vnni"}, "x86_64")["reduce_range"] is False
    assert int8_recipe({"avx2", "avx_vnni"}, "x86_64")["reduce_range"] is False
    no_vnni = int8_recipe({"avx2", "fma", "avx512f"}, "x86_64")
    assert no_vnni["reduce_range"] is True and (no_vnni["activation_type"], no_vnni["weight_type"]) == ("uint8", "int8")
    assert int8_recipe(set(), "AMD64")["reduce_range"] is True
    arm = int8_recipe(None, "aarch64")
    assert (arm["activation_type"], arm["reduce_range"]) == ("int8", False)


def test_parse_formats():
    assert parse_formats("all") == ["torchscript", "onnx", "pt2", "executorch"]
    assert parse_formats("torchscript,onnx") == ["torchscript", "onnx"]  # what `mnv2 export` writes unless told
    assert parse_formats("onnx") == ["onnx"] and parse_formats(["onnx", "torchscript"]) == ["torchscript", "onnx"]
    for bad in ("tflite", "", "onnx,coreml"):
        with pytest.raises(ConfigError):
            parse_formats(bad)


# ------------------------------------------------------------------------------------------------ bad input
def _cli(*args: str) -> int:
    return main(["export", *map(str, args)])


def test_cli_writes_and_prints_a_table(trained_checkpoint, tmp_path, capsys):
    assert _cli(trained_checkpoint, "--format", "torchscript", "--out", tmp_path / "o") == 0
    out = capsys.readouterr().out
    assert TORCHSCRIPT_FILE in out and "fp32" in out and MANIFEST_FILE in out
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [MANIFEST_FILE, TORCHSCRIPT_FILE]


def _bad_checkpoints(tmp_path: Path, good: Path) -> dict[str, Path]:
    from mnv2export.checkpoint import FORMAT

    files = {}
    files["missing"] = tmp_path / "nope.pt"
    files["truncated"] = tmp_path / "truncated.pt"
    files["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files["not a checkpoint"] = tmp_path / "notes.pt"
    files["not a checkpoint"].write_text("hello")
    payload = torch.load(good, weights_only=True)
    payload["model_config"] = {**payload["model_config"], "arch": "resnet50"}
    files["other architecture"] = tmp_path / "resnet.pt"
    torch.save(payload, files["other architecture"])
    files["pickled object"] = tmp_path / "pickle.pt"
    torch.save({"format": FORMAT, "schema_version": 1, "model": nn.Linear(2, 2)}, files["pickled object"])
    return files


def test_bad_checkpoints_are_one_line_errors(trained_checkpoint, tmp_path, capsys):
    expect = {
        "missing": "not found",
        "truncated": "truncated",
        "not a checkpoint": "is a text file, not a torch checkpoint",
        "other architecture": "another architecture",
        "pickled object": "pickled",
    }
    for what, path in _bad_checkpoints(tmp_path, trained_checkpoint).items():
        out = tmp_path / f"out-{what.replace(' ', '-')}"
        assert _cli(path, "--out", out) == 1, what
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1 and expect[what] in err, (what, err)
        assert not out.exists(), what


def test_bad_options_and_calibration_data(trained_checkpoint, tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "train" / "a").mkdir(parents=True)
    cases = [
        (["--format", "tflite"], "unknown --format tflite"),
        (["--quantize", "--calib-data", tmp_path / "nowhere"], "calibration data not found"),
        (["--quantize", "--calib-data", empty], "holds no images"),
        (["--quantize", "--calib-size", "0"], "--calib-size = 0 is out of range"),
        (["--quantize", "--calib-method", "kl"], "unknown calibration method"),
        (["--opset", "12"], "opset 12 is not supported"),
        (["--opset", str(max_opset() + 1)], f"opset {max_opset() + 1} is not supported"),  # beyond onnx or ONNX Runtime
        (["--format", "torchscript", "--quantize"], "--quantize makes ONNX and ExecuTorch INT8 models"),
        (["--calib-data", empty], "only used for INT8"),
    ]
    for args, message in cases:
        out = tmp_path / "out"
        assert _cli(trained_checkpoint, *args, "--out", out) == 1, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err, (args, err)
        assert not out.exists(), args  # refused before any work


def test_unwritable_output_folder(trained_checkpoint, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        assert _cli(trained_checkpoint, "--format", "torchscript", "--out", out) == 1
        assert "error: " in capsys.readouterr().err
    with pytest.raises(OutputError):
        export_all(trained_checkpoint, blocker, formats="torchscript")


def test_missing_calibration_data_fails_before_any_work(trained_checkpoint, tmp_path):
    with pytest.raises(DataError):
        export_all(trained_checkpoint, tmp_path / "o", quantize=True, calib_data=str(tmp_path / "absent"))
    assert not (tmp_path / "o").exists()


def test_interrupted_export_leaves_no_partial_artifact(trained_checkpoint, tmp_path, monkeypatch):
    """Ctrl-C while the ONNX export runs (after TorchScript was written): no new file under a final name, no
    temporary file, and the previous export's files untouched."""
    import mnv2export.export.onnx as onnx_export

    out = tmp_path / "o"
    threads = torch.get_num_threads()
    export_all(trained_checkpoint, out, formats="torchscript")
    assert torch.get_num_threads() == threads  # the export runs torch on one thread and gives the setting back
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(folded, example, metadata, path, *args, **kwargs):  # killed halfway through writing the file
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "export_onnx", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_all(trained_checkpoint, out, formats="torchscript,onnx")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert torch.get_num_threads() == threads


def test_an_export_removes_an_earlier_exports_artifacts_it_did_not_write(exported, tmp_path):
    """Into a folder holding a fuller export (INT8, FP16...): the artifact names this export did not write are gone
    after it, so nothing (bench, predict) can pick up another model's file; files of other names stay."""
    import shutil

    out = tmp_path / "o"
    shutil.copytree(exported.out_dir, out)
    (out / "notes.txt").write_text("mine")
    manifest = export_all(exported.data["source_checkpoint"]["path"], out, formats="torchscript")
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST_FILE, TORCHSCRIPT_FILE, "notes.txt"])
    assert list(manifest.artifacts) == [TORCHSCRIPT_FILE] and (out / "notes.txt").read_text() == "mine"
    # only what an earlier manifest lists: a file of an artifact's name that no export of this folder wrote stays
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / FP16_FILE).write_text("someone's own file")
    export_all(exported.data["source_checkpoint"]["path"], mine, formats="torchscript")
    assert (mine / FP16_FILE).read_text() == "someone's own file"


def test_zip_of_the_torchscript_file_holds_the_metadata(exported):
    with zipfile.ZipFile(exported.out_dir / TORCHSCRIPT_FILE) as z:
        entry = next(n for n in z.namelist() if n.endswith("/extra/mnv2_metadata.json"))
        assert json.loads(z.read(entry))["format"] == "torchscript"


def test_the_opset_ceiling_is_the_newest_onnxruntime_loads():
    """--opset is capped where ONNX Runtime stops loading models (onnx itself may define newer opsets: 28 against 26)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def loads(opset):
        value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("a", "b")]
        graph = helper.make_graph([helper.make_node("Relu", ["a"], ["b"])], "g", value[:1], value[1:])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return True
        except Exception:  # noqa: BLE001
            return False

    top = ort_max_opset()
    assert 18 <= top <= onnx.defs.onnx_opset_version() and loads(top)
    assert top == onnx.defs.onnx_opset_version() or not loads(top + 1)
    assert max_opset() == min(top, onnx.defs.onnx_opset_version())


# --------------------------------------------------------------------------------------------------- fold, calibration
def test_fold_check_refuses_nan_and_a_diff_just_over_the_limit():
    from mnv2export.fold import FOLD_ATOL, check_fold_logits

    ref = torch.zeros(2, 4)
    with pytest.raises(ExportError, match="differs"):
        check_fold_logits(ref, torch.full((2, 4), float("nan")))  # the docstring: "also catches NaN"
    with pytest.raises(ExportError, match="differs"):
        check_fold_logits(ref, ref + 2e-4)
    assert FOLD_ATOL == 1e-4 and check_fold_logits(ref, ref + 5e-5) == pytest.approx(5e-5)


def test_export_refuses_a_wrong_fold(trained_checkpoint, tmp_path, monkeypatch):
    """export_all checks the folded model against the unfolded one before writing anything."""
    import mnv2export.fold as fold

    real = fold.fold_bn

    def wrong(model):
        folded = real(model)
        with torch.no_grad():
            folded.features[18][0].weight.mul_(1.05)
        return folded

    monkeypatch.setattr(fold, "fold_bn", wrong)
    with pytest.raises(ExportError, match="BatchNorm-folded model differs"):
        export_all(trained_checkpoint, tmp_path / "o", formats="torchscript")
    assert not (tmp_path / "o" / TORCHSCRIPT_FILE).exists()


def test_calibration_reader_feeds_every_image():
    from mnv2export.export.quantize import CalibrationReader

    images = np.random.default_rng(0).standard_normal((40, 3, 8, 8)).astype(np.float32)
    reader = CalibrationReader(images, batch=16)
    fed = np.concatenate([b["input"] for b in reader])
    assert len(reader) == 3 and np.array_equal(fed, images)


def test_other_calibration_methods(exported, tmp_path, capsys):
    """entropy / percentile are really used (other activation scales than minmax, not only another label in the
    settings), keep their agreement with FP32, and print nothing."""
    from onnx import numpy_helper

    x = _val_images(32)
    meta = read_metadata(exported.out_dir / ONNX_FILE)
    fp32 = load_artifact(exported.out_dir / ONNX_FILE).run(x).argmax(1)
    scales = {}
    for method in ("minmax", "entropy", "percentile"):
        settings = quantize_onnx(exported.out_dir / ONNX_FILE, tmp_path / f"{method}.onnx", x, meta, method=method)
        assert settings["calibration_method"] == method
        assert capsys.readouterr().out == ""  # ONNX Runtime's histogram calibrators print; the library keeps it quiet
        assert (load_artifact(tmp_path / f"{method}.onnx").run(x).argmax(1) == fp32).mean() >= 0.8, method
        model = onnx.load(str(tmp_path / f"{method}.onnx"))
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        scales[method] = np.array([float(inits[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"])
    assert not np.allclose(scales["minmax"], scales["entropy"]) and not np.allclose(
        scales["minmax"], scales["percentile"]
    )


def test_export_uses_and_records_the_calibration_method_asked_for(trained_checkpoint, tmp_path):
    from mnv2export.export import export_all

    m = export_all(
        trained_checkpoint, tmp_path / "pct", formats="onnx", quantize=True, calib_size=32, calib_method="percentile"
    )
    assert m.data["settings"]["calib_method"] == "percentile" and m.data["settings"]["calib_size"] == 32
    assert m.artifacts[INT8_FILE]["export_settings"]["calibration_method"] == "percentile"
    assert read_metadata(tmp_path / "pct" / INT8_FILE)["quantization"]["calibration_method"] == "percentile"


def test_manifest_int8_agreement_is_int8_against_fp32(exported, trained_checkpoint):
    """README: 'The manifest records the INT8 model's top-1 agreement with FP32 on up to 64 calibration images.'"""
    from mnv2export.checkpoint import load_checkpoint
    from mnv2export.export.calib import load_calibration
    from mnv2export.export.quantize import top1_agreement

    calib = load_calibration(load_checkpoint(trained_checkpoint), None, 96)  # as the `exported` fixture calibrated
    want = top1_agreement(exported.out_dir / ONNX_FILE, exported.out_dir / INT8_FILE, calib.images[:64])
    assert exported.artifacts[INT8_FILE]["export_settings"]["top1_agreement_fp32_calib"] == want


# --------------------------------------------------------------------------------------------------- export
def test_torchscript_export_refuses_a_file_that_answers_differently(tmp_path):
    from mnv2export.export.torchscript import export_torchscript
    from mnv2export.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=4, width_mult=0.35)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    export_torchscript(model, x, {}, tmp_path / "ok.pt", reference=ref)
    with pytest.raises(ExportError, match="answers differently"):
        export_torchscript(model, x, {}, tmp_path / "bad.pt", reference=ref + 0.05)


def test_torchscript_file_is_frozen(exported):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(exported.out_dir / "model.torchscript.pt"), map_location="cpu")
    assert list(loaded.parameters()) == []  # weights inlined as constants


def test_artifacts_name_the_data_folder_without_the_training_machines_path(tmp_path):
    """A checkpoint trained on a folder records its full path (its own machine's provenance); the artifacts that ship
    embed only the folder's and the class index's names, and the data fingerprint."""
    from mnv2export.checkpoint import Checkpoint, load_checkpoint, provenance, save_checkpoint
    from mnv2export.config import DataConfig
    from mnv2export.data import build_datasets
    from mnv2export.data.synth import class_names, write_synth

    private = tmp_path / "home" / "alice" / "client-x"
    write_synth(private / "imnet4", num_classes=4, per_class=3, size=32, val_per_class=3)
    (private / "idx.json").write_text(json.dumps({str(i): [wnid, f"c{i}"] for i, wnid in enumerate(class_names(4))}))
    cfg = DataConfig(source=str(private / "imnet4"), class_index=str(private / "idx.json"), img_size=32)
    bundle = build_datasets(cfg, augment=False)
    model = build_model(ModelConfig(num_classes=4, width_mult=0.35)).eval()
    ckpt = Checkpoint(
        model_config=ModelConfig(num_classes=4, width_mult=0.35),
        data_config=cfg,
        class_names=bundle.class_names,
        state_dict=model.state_dict(),
        train_summary={"epoch": 1, "epochs": 1, "data": bundle.summary},
        provenance=provenance(bundle.fingerprint),
    )
    path = save_checkpoint(ckpt, tmp_path / "run" / "best.pt")
    assert load_checkpoint(path).data_config.source == str(private / "imnet4")  # the checkpoint keeps the path
    manifest = export_all(path, tmp_path / "out", formats="torchscript,onnx", quantize=True, calib_size=8)
    for name in (TORCHSCRIPT_FILE, ONNX_FILE, INT8_FILE):
        meta = read_metadata(manifest.out_dir / name)
        assert "alice" not in json.dumps(meta), name
        assert meta["data_config"]["source"] == "imnet4" and meta["data_config"]["class_index"] == "idx.json"
        assert meta["train_summary"]["data"]["source"] == "imnet4"
        assert meta["class_names"] == ["c0", "c1", "c2", "c3"]


def test_a_pipeline_runs_checkpoint_exports_into_that_run(tmp_path, monkeypatch):
    """`mnv2 check runs/x/weights/best.pt` looked in export/weights (shared by every pipeline run), not in runs/x/export
    where the pipeline exported it; from inside the weights folder too."""
    from mnv2export.export import default_out_dir

    run = tmp_path / "runs" / "x"
    (run / "weights").mkdir(parents=True)
    (run / "weights" / "best.pt").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert default_out_dir("runs/x/weights/best.pt") == Path("export") / "weights"  # no pipeline.json: a plain folder
    (run / "pipeline.json").write_text("{}")
    assert default_out_dir("runs/x/weights/best.pt") == Path("runs/x/export")
    monkeypatch.chdir(run / "weights")
    assert default_out_dir("best.pt") == Path("../export")
    (tmp_path / "weights").mkdir()  # a folder named weights elsewhere keeps the usual default
    assert default_out_dir(tmp_path / "weights" / "best.pt") == Path("export") / "weights"


# --- temporary files, a full disk --------------------------------------------------------------------------------
def test_a_killed_exports_temporary_files_stay_in_its_folder_and_the_next_export_removes_them(
    trained_checkpoint, tmp_path
):
    """SIGKILL in the INT8 step left hidden .model.*.tmp files in the output folder and onnxruntime's folders in the
    system's temporary directory, which no later export removed. Now every temporary file is in one work folder of
    the output folder, and the next export into that folder removes it."""
    import signal

    out, systmp = tmp_path / "out", tmp_path / "systmp"
    systmp.mkdir()
    kill_in_calibration = (  # a real SIGKILL at a known point: the INT8 step's first calibration batch
        "import os, signal, sys\n"
        "from mnv2export.export import quantize\n"
        "quantize.CalibrationReader.get_next = lambda self: os.kill(os.getpid(), signal.SIGKILL)\n"
        "from mnv2export.cli import main\n"
        f"sys.exit(main(['export', {str(trained_checkpoint)!r}, '--format', 'onnx', '--quantize', '--calib-size', '16', '--out', {str(out)!r}]))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", kill_in_calibration],
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(systmp)},
        check=False,
    )
    assert r.returncode == -signal.SIGKILL, r.stderr
    # nothing in the system's temporary directory (but .ses, one small file onnxruntime writes when it is imported)
    assert [p.name for p in systmp.iterdir() if p.name != ".ses"] == []
    left = [p.name for p in out.iterdir()]
    assert len(left) == 1 and left[0].startswith(".mnv2-work."), left
    work = out / left[0]
    assert any(p.name.startswith(".model.onnx.") for p in work.iterdir())  # the staged FP32 file
    assert any(p.name.startswith("mnv2-int8-") for p in work.iterdir())  # the INT8 step's folder

    export_all(trained_checkpoint, out, formats="torchscript")
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_FILE, TORCHSCRIPT_FILE]


def test_an_export_removes_stale_temporary_files_and_nothing_else(trained_checkpoint, tmp_path):
    """Leftovers of killed exports (this version's work folders, earlier versions' hidden .tmp files and INT8
    folders) go; a live export's work folder (its lock held) and every other file stay."""
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    stale = [
        ".model.onnx.k2j3h4.tmp",
        ".model.int8.onnx.abc.tmp",
        ".manifest.json.x1.tmp",
        "mnv2-int8-q1w2/pre.onnx",
        ".mnv2-work.999.abc/.model.onnx.x.tmp",
    ]
    kept = [
        "notes.txt",
        ".notes.txt.abc.tmp",
        "mnv2-int8.txt",
        "my-model.onnx",
        ".mnv2-work.123.live/.model.onnx.y.tmp",
    ]
    for name in stale + kept:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(name)
    live = os.open(out / ".mnv2-work.123.live", os.O_RDONLY)  # as a running export holds its work folder
    fcntl.flock(live, fcntl.LOCK_EX)
    try:
        export_all(trained_checkpoint, out, formats="torchscript")
    finally:
        os.close(live)
    for name in kept:
        assert (out / name).read_text() == name, name
    for name in stale:
        assert not (out / name.split("/")[0]).exists(), name
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MANIFEST_FILE, TORCHSCRIPT_FILE, *{k.split("/")[0] for k in kept}]
    )


def _raise_enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["onnxruntime.quantization's onnx.save", "the INT8 file's write"])
def test_a_full_disk_in_the_int8_step_is_the_disk_full_error(trained_checkpoint, tmp_path, monkeypatch, where):
    """A full disk during the INT8 step said "INT8 quantization failed: [Errno 28] ...: report it": onnxruntime's
    quantizer raises it from inside (wrapped as a failure of its own). It is the one-line disk-full error, naming the
    INT8 file, and the folder keeps its earlier export, with no temporary file."""
    from mnv2export import fileio

    out = tmp_path / "out"
    export_all(trained_checkpoint, out, formats="torchscript")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    if where.startswith("onnxruntime"):
        monkeypatch.setattr(onnx, "save", _raise_enospc)  # what quant_pre_process calls to write its result
    else:
        write_all = fileio._write_all
        monkeypatch.setattr(
            fileio,
            "_write_all",
            lambda path, data: _raise_enospc() if path.name.startswith(f".{INT8_FILE}.") else write_all(path, data),
        )
    with pytest.raises(OutputError) as err:
        export_all(trained_checkpoint, out, formats="onnx", quantize=True, calib_size=16)
    assert err.value.what == "disk full while writing" and err.value.path == str(out / INT8_FILE)
    assert err.value.hint == "free some space and run again; earlier files are intact"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_temporary_file_cut_short_is_an_error_never_read(trained_checkpoint, tmp_path, monkeypatch):
    """A write that stops short without an error (a full disk under a writer that does not check) left a file that the
    next step read: "Wire format was corrupt". Every file the export writes has its size checked after the write."""
    from mnv2export import fileio
    from mnv2export.export import onnx as onnx_export

    def short(path, data):  # the device took half
        Path(path).write_bytes(bytes(data)[: len(data) // 2])

    read = []
    verify = onnx_export.verify_with_ort
    monkeypatch.setattr(
        onnx_export, "verify_with_ort", lambda path, *a, **kw: read.append(path) or verify(path, *a, **kw)
    )
    monkeypatch.setattr(fileio, "_write_all", short)
    with pytest.raises(OutputError) as err:
        export_all(trained_checkpoint, tmp_path / "out", formats="onnx")
    assert err.value.what == "disk full while writing" and err.value.path == str(tmp_path / "out" / ONNX_FILE)
    assert read == []  # never read
    assert list((tmp_path / "out").iterdir()) == []
