"""ExecuTorch programs (.pte, XNNPACK): FP32 round trip with a dynamic batch, INT8 agreement with FP32, metadata
read back from the file, and the error when the mobile extra is not installed."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from mnv2export.errors import ArtifactError, ConfigError
from mnv2export.export import executorch as et

needs_executorch = pytest.mark.skipif(
    __import__("importlib").util.find_spec("executorch") is None, reason="needs the mobile extra (executorch)"
)


@pytest.fixture(scope="module")
def folded(trained_checkpoint):
    from mnv2export.checkpoint import load_checkpoint
    from mnv2export.export.calib import load_calibration
    from mnv2export.fold import fold_bn

    ckpt = load_checkpoint(trained_checkpoint)
    meta = {**ckpt.metadata(), "format": "pte", "input_name": "input", "output_name": "logits"}
    calib = torch.from_numpy(load_calibration(ckpt, None, 64).images)
    val = torch.from_numpy(load_calibration(ckpt, None, 64, split="val").images)
    return fold_bn(ckpt.build_model()), meta, calib, val


@pytest.fixture(scope="module")
def fp32(folded, tmp_path_factory):
    model, meta, calib, _ = folded
    path = tmp_path_factory.mktemp("pte") / "model.pte"
    return path, et.export_pte(model, calib[:2], meta, path)


@needs_executorch
@pytest.mark.parametrize("n", [1, 5, et.PTE_MAX_BATCH])
def test_fp32_round_trip_matches_folded_model(folded, fp32, n):
    model, _, _, val = folded
    x = val[:n]
    with torch.no_grad():
        want = model(x).numpy()
    got = et.load_pte(fp32[0])(x.numpy())
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4


@needs_executorch
def test_fp32_batch_over_the_range_runs_in_chunks(folded, fp32):
    """The runtime refuses a batch over PTE_MAX_BATCH with a bare error code: the runner splits it."""
    model, _, calib, val = folded
    x = torch.cat([val, calib])[: et.PTE_MAX_BATCH + 5]
    with torch.no_grad():
        want = model(x).numpy()
    got = et.load_pte(fp32[0])(x.numpy())
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4


@needs_executorch
def test_fp32_settings_say_what_stayed_outside_xnnpack(fp32):
    settings = fp32[1]
    assert settings["dynamic_batch"] == {"min": 1, "max": et.PTE_MAX_BATCH}
    # every convolution, ReLU6, add, the pooling, the flatten and the classifier run in one XNNPACK delegate
    assert settings["xnnpack_delegates"] == 1
    assert settings["undelegated_call_function_nodes"] == 0 and settings["undelegated_ops"] == {}
    assert settings["max_abs_diff_vs_pytorch"] <= 1e-4


@needs_executorch
def test_metadata_read_back(folded, fp32):
    meta = et.read_pte_metadata(fp32[0])
    assert meta == {**folded[1], "precision": "fp32", "max_batch": et.PTE_MAX_BATCH}
    runner = et.load_pte(fp32[0])
    assert runner.format == "pte" and runner.precision == "fp32" and runner.class_names == folded[1]["class_names"]


@needs_executorch
@pytest.mark.slow
def test_int8_agrees_with_fp32(folded, tmp_path):
    model, meta, calib, val = folded
    path = tmp_path / "model.int8.pte"
    settings = et.export_pte_int8(model, calib, meta, path)
    assert settings["top1_agreement_fp32_calib"] >= 0.9
    assert settings["xnnpack_delegates"] == 1 and settings["undelegated_ops"] == {}
    runner = et.load_pte(path)
    assert runner.precision == "int8" and et.read_pte_metadata(path)["precision"] == "int8"
    with torch.no_grad():
        want = model(val).argmax(1).numpy()
    got = np.concatenate([runner(x.numpy()).argmax(1) for x in val.split(et.PTE_MAX_BATCH)])
    assert (got == want).mean() >= 0.9
    # INT8, not FP32 under another name: the logits move by more than float rounding
    with torch.no_grad():
        assert np.abs(runner(val[:8].numpy()) - model(val[:8]).numpy()).max() > 1e-4


@needs_executorch
def test_not_a_program_is_an_artifact_error(tmp_path):
    bogus = tmp_path / "model.pte"
    bogus.write_bytes(b"\0" * 64)
    with pytest.raises(ArtifactError):
        et.read_pte_metadata(bogus)


@pytest.mark.parametrize("missing", ["executorch", "executorch.exir", "torchao"])
def test_missing_extra_names_the_install_command(missing, monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == missing or m.startswith(missing + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` raises ImportError now
    for call in (
        lambda: et.export_pte(torch.nn.Identity(), torch.zeros(2, 3, 8, 8), {}, tmp_path / "m.pte"),
        lambda: et.export_pte_int8(torch.nn.Identity(), torch.zeros(2, 3, 8, 8), {}, tmp_path / "m.pte"),
        lambda: et.load_pte(tmp_path / "m.pte"),
    ):
        with pytest.raises(ConfigError) as err:
            call()
        assert 'python -m pip install -c constraints.txt -e ".[mobile]"' in str(err.value)
        assert "\n" not in str(err.value)
    assert not (tmp_path / "m.pte").exists()
