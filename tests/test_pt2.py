"""The AOTInductor package (.pt2): round trip with a dynamic batch, metadata inside, device and compiler errors, and
a load in a process that cannot import mnv2export. One compilation per module (tens of seconds on 2 cores)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from mnv2export.errors import ArtifactError, ConfigError
from mnv2export.export.pt2 import PT2_MAX_BATCH, export_pt2, load_pt2, read_pt2_metadata


@pytest.fixture(scope="module")
def folded(trained_checkpoint):
    from mnv2export.checkpoint import load_checkpoint
    from mnv2export.fold import fold_bn

    ckpt = load_checkpoint(trained_checkpoint)
    meta = {**ckpt.metadata(), "format": "pt2", "precision": "fp32", "input_name": "input", "output_name": "logits"}
    return fold_bn(ckpt.build_model()), meta


@pytest.fixture(scope="module")
def package(folded, tmp_path_factory):
    model, meta = folded
    path = tmp_path_factory.mktemp("pt2") / "model.pt2"
    settings = export_pt2(model, torch.randn(2, *meta["input_size"]), meta, path)
    return path, settings


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 3, PT2_MAX_BATCH])
def test_round_trip_matches_folded_model(folded, package, n):
    model, meta = folded
    runner = load_pt2(package[0])
    x = torch.randn(n, *meta["input_size"], generator=torch.Generator().manual_seed(n))
    with torch.no_grad():
        want = model(x).numpy()
    got = runner(x.numpy())
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4


@pytest.mark.slow
def test_batch_over_the_range_runs_in_chunks(folded, package):
    """The compiled code takes 1 to PT2_MAX_BATCH images and does not check it: the runner splits a larger batch."""
    model, meta = folded
    x = torch.randn(PT2_MAX_BATCH + 3, *meta["input_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x).numpy()
    got = load_pt2(package[0])(x.numpy())
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4


@pytest.mark.slow
def test_settings_and_metadata_read_back(folded, package):
    path, settings = package
    assert settings["device"] == "cpu" and settings["dynamic_batch"] == {"min": 1, "max": PT2_MAX_BATCH}
    assert settings["compile_seconds"] > 0
    meta = read_pt2_metadata(path)
    assert meta == {**folded[1], "device": "cpu", "max_batch": PT2_MAX_BATCH}
    assert load_pt2(path).class_names == folded[1]["class_names"]


@pytest.mark.slow
def test_cpu_package_asked_for_cuda_names_its_device(package):
    with pytest.raises(ArtifactError, match="compiled for cpu and cannot run on cuda") as err:
        load_pt2(package[0], device="cuda")
    assert "\n" not in str(err.value)


def _as_if_compiled_for_cuda(src, dst):
    """A copy of the package whose metadata (AOTInductor's and ours) says cuda."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("_metadata.json"):
                aoti = json.loads(data)
                ours = json.loads(aoti["mnv2_metadata"])
                aoti["AOTI_DEVICE_KEY"], aoti["mnv2_metadata"] = "cuda", json.dumps({**ours, "device": "cuda"})
                data = json.dumps(aoti).encode()
            zout.writestr(info, data)


@pytest.mark.slow
def test_cuda_package_on_cpu_names_its_device(package, tmp_path):
    fake = tmp_path / "cuda.pt2"
    _as_if_compiled_for_cuda(package[0], fake)
    with pytest.raises(ArtifactError, match="compiled for cuda and cannot run on cpu") as err:
        load_pt2(fake, device="cpu")
    assert "\n" not in str(err.value)


def test_missing_compiler_is_a_config_error(folded, tmp_path, monkeypatch):
    """torch's own compiler search, pointed at a compiler that does not exist, before anything is traced."""
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: pytest.fail("traced before the compiler check"))
    model, meta = folded
    # torch's config patch, not monkeypatch: torch's config module has its own attribute protocol, which
    # monkeypatch's undo broke (every later compilation then failed with "cpp.cxx does not exist")
    with (
        torch._inductor.config.patch({"cpp.cxx": (None, str(tmp_path / "no-such-g++"))}),
        pytest.raises(ConfigError, match="C\\+\\+ compiler") as err,
    ):
        export_pt2(model, torch.randn(2, *meta["input_size"]), meta, tmp_path / "m.pt2")
    assert torch._inductor.config.cpp.cxx != (None, str(tmp_path / "no-such-g++"))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "m.pt2").exists()


def test_not_a_package_is_an_artifact_error(tmp_path):
    bogus = tmp_path / "model.pt2"
    bogus.write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="not a readable .pt2"):
        read_pt2_metadata(bogus)


LOAD_WITHOUT_MNV2 = """
import json, sys
sys.modules["mnv2export"] = None  # importing it now fails: only torch reads the package
import numpy as np, torch
model = torch._inductor.aoti_load_package(sys.argv[1])
meta = json.loads(model.get_metadata()["mnv2_metadata"])
x = torch.from_numpy(np.load(sys.argv[2]))
np.save(sys.argv[3], model(x).numpy())
print(meta["class_names"][0])
"""


@pytest.mark.slow
def test_loads_without_mnv2export(folded, package, tmp_path):
    model, meta = folded
    x = torch.randn(2, *meta["input_size"])
    np.save(tmp_path / "x.npy", x.numpy())
    shutil.copy(package[0], tmp_path / "copy.pt2")
    r = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_MNV2, "copy.pt2", "x.npy", "y.npy"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == meta["class_names"][0]
    with torch.no_grad():
        assert np.abs(np.load(tmp_path / "y.npy") - model(x).numpy()).max() <= 1e-4
