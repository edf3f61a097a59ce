import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from mnv2export.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from mnv2export.config import DataConfig, ModelConfig
from mnv2export.errors import CheckpointError
from mnv2export.model import build_model


def _ckpt():
    cfg = ModelConfig(num_classes=3, width_mult=0.35)
    model = build_model(cfg)
    return Checkpoint(cfg, DataConfig(img_size=32), ["a", "b", "c"], model.state_dict(), {"epoch": 1}, {"torch": "x"})


def test_round_trip_is_weights_only_and_complete(tmp_path):
    path = save_checkpoint(_ckpt(), tmp_path / "best.pt")
    raw = torch.load(path, weights_only=True)  # the plain safe loader reads it
    assert raw["format"] == "mnv2export.checkpoint" and raw["schema_version"] == 1
    ckpt = load_checkpoint(path)
    assert ckpt.class_names == ["a", "b", "c"] and ckpt.model_config.width_mult == 0.35
    assert ckpt.data_config.img_size == 32 and len(ckpt.sha256) == 64
    model = ckpt.build_model()
    assert not model.training
    x = torch.randn(2, 3, 32, 32)
    ref = build_model(ckpt.model_config)
    ref.load_state_dict(ckpt.state_dict)
    assert torch.equal(model(x), ref.eval()(x))
    meta = ckpt.metadata()
    assert (
        meta["mean"] == list(DataConfig().mean)
        and meta["input_size"] == [3, 32, 32]
        and meta["source_checkpoint_sha256"] == ckpt.sha256
    )
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # no temporary file left behind


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/mnv2-pwned",))


def test_pickled_objects_are_refused(tmp_path):
    payload = _ckpt().to_payload()
    payload["train_summary"] = {"note": Evil()}
    torch.save(payload, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="pickled Python object"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not os.path.exists("/tmp/mnv2-pwned")


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: None, "not found"),
        (lambda p: p.mkdir(), "is a folder"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"hello, not a zip"), "is a text file, not a torch checkpoint"),
        (
            lambda p: p.write_text('{"artifacts": {}}'),
            "is a JSON file, not a torch checkpoint",
        ),  # a manifest, config.json
        (lambda p: p.write_bytes(bytes(range(256)) * 4), "not a readable torch file"),
        (
            lambda p: p.write_bytes(pickle.dumps({"epoch": 3}, protocol=4)),
            "not a readable torch file",
        ),  # no class: no alarm
        (lambda p: (save_checkpoint(_ckpt(), p), p.write_bytes(p.read_bytes()[:5000])), "not a readable torch file"),
        (lambda p: torch.save(build_model(ModelConfig(width_mult=0.35)).state_dict(), p), "bare state dict"),
        (lambda p: torch.save({"epoch": 3}, p), "not an mnv2export checkpoint"),
        (lambda p: torch.save({**_ckpt().to_payload(), "schema_version": 99}, p), "newer"),
        (
            lambda p: torch.save(
                {**_ckpt().to_payload(), "model_config": {**_ckpt().model_config.to_dict(), "arch": "resnet50"}}, p
            ),
            "another architecture",
        ),
        (lambda p: torch.save({**_ckpt().to_payload(), "class_names": ["a"]}, p), "names 1 classes"),
        (
            lambda p: torch.save(
                {**_ckpt().to_payload(), "model_config": {"num_classes": 3, "width_mult": 9.0, "arch": "mobilenet_v2"}},
                p,
            ),
            "invalid setting",
        ),
    ],
)
def test_bad_checkpoints(tmp_path, make, match):
    path = tmp_path / "c.pt"
    make(path)
    with warnings.catch_warnings(record=True) as seen, pytest.raises(CheckpointError, match=match) as info:
        warnings.simplefilter("always")
        load_checkpoint(path)
    assert info.value.hint
    assert not [w for w in seen if "pickle protocol" in str(w.message)]  # the error is the one line a user sees


def test_weights_of_another_model_are_an_error(tmp_path):
    ckpt = _ckpt()
    ckpt.state_dict = build_model(ModelConfig(num_classes=3, width_mult=0.5)).state_dict()
    save_checkpoint(ckpt, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "c.pt").build_model()


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = save_checkpoint(_ckpt(), tmp_path / "last.pt")
    before = path.read_bytes()

    real_write = Path.write_bytes

    def half_then_interrupted(self, data):  # the process dies halfway through writing the file to disk
        real_write(self, bytes(data)[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", half_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_ckpt(), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize(
    "change, match",
    [
        ({"schema_version": 2}, "newer"),
        ({"schema_version": None}, "schema version None is not valid"),
        ({"schema_version": "1"}, "schema version"),
        ({"schema_version": 0}, "schema version 0 is not valid"),
        ({"schema_version": True}, "schema version True is not valid"),
        ({"state_dict": {"features.0.0.weight": [1.0, 2.0]}}, "not a state dict of tensors"),
    ],
)
def test_bad_schema_versions_and_weights(tmp_path, change, match):
    payload = {**_ckpt().to_payload(), **change}
    if change.get("schema_version", 0) is None:
        del payload["schema_version"]
    torch.save(payload, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path / "c.pt")


def test_an_exported_artifact_is_named_as_such_not_called_corrupt(exported, tmp_path):
    """A TorchScript or ONNX file passed where a checkpoint belongs: one error saying what it is and what to pass (the
    checkpoint its manifest names), and no torch warning about dispatching a TorchScript archive to torch.jit.load."""
    from mnv2export.layout import ONNX_FILE, TORCHSCRIPT_FILE
    from mnv2export.safe_load import torch_load_safely

    source = exported.data["source_checkpoint"]["path"]
    alone = tmp_path / "alone"
    alone.mkdir()
    for name, kind in ((TORCHSCRIPT_FILE, "a TorchScript artifact"), (ONNX_FILE, "an ONNX artifact")):
        (alone / name).write_bytes((exported.out_dir / name).read_bytes())  # no manifest beside it
        for path, hint in (
            (exported.out_dir / name, source),
            (alone / name, "the best.pt that the export's manifest.json names"),
        ):
            with warnings.catch_warnings(record=True) as seen, pytest.raises(CheckpointError) as info:
                warnings.simplefilter("always")
                load_checkpoint(path)
            assert info.value.what == f"file is {kind}, not a checkpoint", info.value.what
            assert hint in info.value.hint and info.value.path == str(path)
            assert not [w for w in seen if "torch.load" in str(w.message) or "TorchScript" in str(w.message)], [
                str(w.message) for w in seen
            ]
        with pytest.raises(CheckpointError, match=f"{kind}, not a state dict"):  # train --init-from
            torch_load_safely(exported.out_dir / name, "initial weights file", "pass a state dict")


def test_the_cli_says_so_in_one_line_without_torchs_warning(exported, tmp_path):
    import subprocess
    import sys

    from mnv2export.layout import TORCHSCRIPT_FILE

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mnv2export",
            "export",
            str(exported.out_dir / TORCHSCRIPT_FILE),
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
    )
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: file is a TorchScript artifact") and "truncated or corrupt" not in lines[0], (
        lines[0]
    )
    assert exported.data["source_checkpoint"]["path"] in lines[0] and not (tmp_path / "x").exists()


def test_non_finite_weights_are_refused_where_a_checkpoint_is_loaded(tmp_path, capsys):
    """A checkpoint with NaN weights exported as 'degenerate BatchNorm statistics' (the folding check's guess), and
    every other command ran it to NaN logits. The loader every command shares refuses it, naming the tensor and the
    count of values."""
    from mnv2export.cli import main

    ckpt = _ckpt()
    ckpt.state_dict = {k: v.clone() for k, v in ckpt.state_dict.items()}
    ckpt.state_dict["features.0.0.weight"].view(-1)[:3] = float("nan")
    ckpt.state_dict["features.1.conv.0.1.running_var"][0] = float("inf")
    path = save_checkpoint(ckpt, tmp_path / "run" / "best.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert info.value.what == (
        "checkpoint weights are not finite: 3 NaN or infinite values in features.0.0.weight (and 1 in 1 other tensor)"
    ), info.value.what
    assert info.value.hint
    out = tmp_path / "export"
    assert main(["export", str(path), "--format", "onnx", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith("error: checkpoint weights are not finite: 3 NaN")
        and "BatchNorm" not in err[0]
    ), err
    assert not out.exists()
