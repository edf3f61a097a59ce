"""The trainer: run folder contents, resume (exact on CPU), kills at random moments, Ctrl-C, DDP on CPU (gloo)."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_FLAGS, tiny_run_config
from PIL import Image
from torch import nn
from torch.nn import functional as F

from mnv2export.checkpoint import load_checkpoint
from mnv2export.config import ModelConfig, RunConfig, TrainConfig
from mnv2export.errors import ConfigError, ProviderUnavailable
from mnv2export.train import fit, resume_config


def mnv2(*args, **kw):
    return subprocess.run([sys.executable, "-m", "mnv2export", *args], capture_output=True, text=True, **kw)


def _torchrun(*args, port: int, timeout: int, cwd=None) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 ARGS`` on the CPU (one thread per process), on a port of its own per test.

    Its temporary files (the agent's ``torchelastic_*`` log folders, which it leaves behind) go to a folder removed
    afterwards, not to /tmp."""
    with tempfile.TemporaryDirectory(prefix="torchrun-") as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": tmp}
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                "2",
                "--master_port",
                str(port + os.getpid() % 1000),
                *args,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            cwd=cwd,
        )


def test_run_folder_holds_everything(tiny_run):
    d = tiny_run.run_dir
    rows = list(csv.DictReader((d / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds"]
    stored = json.loads((d / "config.json").read_text())
    assert stored["format"] == "mnv2export.run_config" and stored["schema_version"] == 1
    cfg = RunConfig.from_dict({k: stored[k] for k in ("model", "data", "train")})
    assert cfg.model.width_mult == 0.35 and cfg.data.img_size == 32
    best, last = load_checkpoint(d / "best.pt"), load_checkpoint(d / "last.pt")
    assert {"optimizer", "scheduler", "scaler", "ema", "rng", "model"} <= set(last.extra["resume"])
    s = last.train_summary
    assert s["epoch"] == 2 and 1 <= s["best_epoch"] <= 2 and s["best_val_acc"] == max(float(r["val_acc"]) for r in rows)
    assert best.train_summary["best_val_acc"] == s["best_val_acc"]
    assert best.provenance["torch"] == str(torch.__version__) and len(best.provenance["data_fingerprint"]) == 64
    assert "resume" not in best.extra  # best.pt is for export: weights and description only


def test_pictures_are_written(tmp_path):
    result = fit(tiny_run_config(plots=True), run_dir=tmp_path / "run")
    for name in (
        "loss_curve.png",
        "kernels.png",
        "feature_maps_shallow.png",
        "feature_maps_deep.png",
        "confusion_matrix.png",
    ):
        with Image.open(result.run_dir / name) as img:
            assert img.size[0] > 100 and img.size[1] > 100


@pytest.mark.parametrize("ema", [False, True])
def test_a_run_whose_weights_become_nan_stops_before_saving_them(tmp_path, monkeypatch, capsys, ema):
    """A NaN loss (fp32: it makes every weight NaN at the next step) was trained on, validated at chance and, in a
    first epoch, saved as best.pt without a word. Now the epoch stops with one error line naming the cause, and the
    files hold the last finite epoch."""
    from mnv2export.cli import main

    calls = {"n": 0}
    forward = nn.CrossEntropyLoss.forward

    def nan_in_epoch_two(self, logits, target):  # 48 * 4 / 16 = 12 training batches an epoch
        loss = forward(self, logits, target)
        if self.reduction == "sum":  # the validation loss
            return loss
        calls["n"] += 1
        return loss * float("nan") if calls["n"] == 15 else loss

    monkeypatch.setattr(nn.CrossEntropyLoss, "forward", nan_in_epoch_two)
    out = tmp_path / "run"
    code = main(["train", *TINY_FLAGS, "--epochs", "3", "--out", str(out), "--amp", "off", *(["--ema"] if ema else [])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert (
        err[-1].startswith("error: training diverged in epoch 2: ")
        and "NaN or infinite (the loss NaN or infinite in 10 batches); last.pt holds epoch 1" in err[-1]
    )
    assert err[-1].endswith(
        "lower the learning rate (lr = 0.05) or warm up longer (warmup_epochs = 0), and train again"
    )  # fp32 already
    assert [r["epoch"] for r in csv.DictReader((out / "metrics.csv").open())] == ["1"]
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(out / name)
        assert ckpt.train_summary["epoch"] == 1, name
        assert all(torch.isfinite(v).all() for v in ckpt.state_dict.values() if v.is_floating_point()), name


_NAN_ON_RANK_1 = """
import os, sys
import torch
from torch import nn
from mnv2export.cli import main

if os.environ["RANK"] == "1":  # one rank's loss NaN: DDP averages its NaN gradients into every rank's weights
    forward, calls = nn.CrossEntropyLoss.forward, []

    def nan_in_epoch_two(self, logits, target):
        loss = forward(self, logits, target)
        if self.reduction == "mean":
            calls.append(1)
            if len(calls) == 8:  # 48 * 4 / 16 / 2 = 6 batches a rank an epoch
                return loss * float("nan")
        return loss

    nn.CrossEntropyLoss.forward = nan_in_epoch_two
sys.exit(main(sys.argv[1:]))
"""


def test_a_diverged_ddp_run_says_so_once(tmp_path):
    script = tmp_path / "nan.py"
    script.write_text(_NAN_ON_RANK_1)
    out = tmp_path / "run"
    proc = _torchrun(
        str(script), "train", *TINY_FLAGS, "--epochs", "3", "--amp", "off", "--out", str(out), port=38500, timeout=300
    )
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(said) == 1, proc.stderr[-3000:]
    assert said[0].startswith("error: training diverged in epoch 2: ") and "last.pt holds epoch 1" in said[0]
    assert load_checkpoint(out / "last.pt").train_summary["epoch"] == 1


def _weights(path):
    return load_checkpoint(path).extra["resume"]["model"]


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _cut_after_first_epoch_then_resume(cfg, out, monkeypatch):
    """Train ``cfg`` into ``out``, interrupted (KeyboardInterrupt) right after epoch 1's evaluation, then resume it
    to the end; returns the resumed run's result."""
    import mnv2export.train.loop as T

    real, calls = T.evaluate, []

    def evaluate_then_stop(*a, **k):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(T, "evaluate", evaluate_then_stop)
        with pytest.raises(KeyboardInterrupt):
            fit(cfg, run_dir=out)
    first = load_checkpoint(out / "last.pt").train_summary
    assert first["epoch"] == 1
    cfg2, ckpt = resume_config(out, {"train": {"epochs": None}})
    real_epoch, trained = T.train_one_epoch, []

    def count_epochs(*a, **k):
        trained.append(1)
        return real_epoch(*a, **k)

    with monkeypatch.context() as m:  # training is deterministic on CPU: starting over would end at the same weights
        m.setattr(T, "train_one_epoch", count_epochs)
        result = fit(cfg2, run_dir=out, resume_from=ckpt)
    assert len(trained) == 1  # epoch 2 only: epoch 1 was not trained again
    assert result.history[0] == first["history"][0]  # epoch 1's row (its seconds included) is the interrupted run's
    return result


def test_resume_continues_exactly(tmp_path, tiny_run, monkeypatch):
    """Interrupted after epoch 1 and resumed: the same weights as the uninterrupted 2-epoch run (tiny_run)."""
    out = tmp_path / "run"
    result = _cut_after_first_epoch_then_resume(tiny_run_config(epochs=2), out, monkeypatch)
    assert result.summary["epoch"] == 2 and len(result.history) == 2
    _same(_weights(out / "last.pt"), _weights(tiny_run.last))


def test_extending_a_run_follows_the_longer_schedule(tmp_path, tiny_run):
    """--resume --epochs 4 on a finished 2-epoch run: epochs 3-4 run at the learning rates of a run planned for 4
    epochs from the start (decaying to zero at its last step), not on the old schedule, which had ended at zero."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, out)
    cfg, ckpt = resume_config(out, {"train": {"epochs": 4}})
    extended = fit(cfg, run_dir=out, resume_from=ckpt)
    planned = fit(tiny_run_config(epochs=4), run_dir=tmp_path / "planned")
    lrs = [row["lr"] for row in extended.history]
    assert lrs[:2] == [row["lr"] for row in tiny_run.history] and lrs[1] == pytest.approx(0.0, abs=1e-12)
    assert lrs[2:] == pytest.approx([row["lr"] for row in planned.history[2:]], rel=1e-9, abs=1e-12)
    assert lrs[2] == pytest.approx(0.05 * (1 + np.cos(0.75 * np.pi)) / 2) and lrs[3] == pytest.approx(
        0.0, abs=1e-12
    )  # cosine, no warm-up


def test_resume_refuses_other_settings(tiny_run):
    with pytest.raises(ConfigError, match="model.width_mult"):
        resume_config(tiny_run.run_dir, {"model": {"width_mult": 0.5}})
    cfg, _ = resume_config(tiny_run.run_dir, {"train": {"epochs": 5}})
    assert cfg.train.epochs == 5  # extending a run is allowed


def test_resume_refuses_another_number_of_processes(tmp_path, tiny_run):
    """A run trained by 2 processes and resumed by 1 (or the reverse) would continue a schedule counted in the other
    steps per epoch (the lr reaching 0 at mid-run, or never decaying) at another global batch: refused before training."""
    import dataclasses
    import shutil

    from mnv2export.checkpoint import save_checkpoint

    out = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, out)
    ckpt = load_checkpoint(out / "last.pt")
    save_checkpoint(dataclasses.replace(ckpt, train_summary={**ckpt.train_summary, "world_size": 2}), out / "last.pt")
    before = (out / "last.pt").read_bytes()
    cfg, ckpt = resume_config(out, {"train": {"epochs": 3}})
    with pytest.raises(ConfigError, match=r"trained by 2 processes, this resume has 1 process.*nproc_per_node 2"):
        fit(cfg, run_dir=out, resume_from=ckpt)
    assert (out / "last.pt").read_bytes() == before


def test_resume_under_torchrun_of_a_one_process_run_is_refused(tmp_path, tiny_run):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, out)
    before = (out / "last.pt").read_bytes()
    r = _torchrun("-m", "mnv2export", "train", "--resume", "--epochs", "3", "--out", str(out), port=32500, timeout=300)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode != 0 and len(errors) == 1, r.stderr[-3000:]  # rank 0 alone says it
    assert "trained by 1 process, this resume has 2 processes" in errors[0] and "without torchrun" in errors[0], errors
    assert (out / "last.pt").read_bytes() == before and "epoch 3/3" not in r.stderr


def _wait_for(predicate, proc, timeout=240):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _epochs_done(out):
    f = out / "metrics.csv"
    return len(f.read_text().splitlines()) - 1 if f.exists() else 0


@pytest.mark.slow
@pytest.mark.parametrize("when", ["start", "epoch1", "epoch2+jitter"])
def test_sigkill_at_any_moment_then_resume(tmp_path, tiny_run, when):
    """SIGKILL during start-up, right after epoch 1, a little into epoch 2 (of 2); --resume continues from the last
    finished epoch and always ends as the clean run."""
    for attempt in range(
        3
    ):  # a kill that came after the run had ended (epoch 2 much faster than epoch 1) is drawn again
        out = tmp_path / f"run{attempt}"
        args = ["train", *TINY_FLAGS, "--epochs", "2", "--out", str(out)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "mnv2export", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        if when == "start":
            assert _wait_for(lambda out=out: (out / "last.pt").exists(), proc)
        else:
            assert _wait_for(lambda out=out: _epochs_done(out) >= 1, proc)
            if (
                when == "epoch2+jitter"
            ):  # up to half as long as epoch 1 took (a quarter, an eighth on a redraw): inside epoch 2
                epoch1_s = float((out / "metrics.csv").read_text().splitlines()[1].split(",")[-1])
                time.sleep(np.random.default_rng().uniform(0.0, 0.5 ** (attempt + 1) * epoch1_s))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.returncode == -signal.SIGKILL or when != "epoch2+jitter":
            break
    assert proc.returncode == -signal.SIGKILL  # the kill hit a running trainer, not one that had finished
    done = load_checkpoint(out / "last.pt").train_summary["epoch"]  # whole, whatever the moment
    assert done < 2 and _epochs_done(out) >= done
    rows_before = (out / "metrics.csv").read_text().splitlines()[: done + 1] if done else []
    r = mnv2("train", "--resume", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert f"at epoch {done + 1} of 2" in r.stderr  # continued from the last finished epoch, not from scratch
    assert _epochs_done(out) == 2
    assert (out / "metrics.csv").read_text().splitlines()[
        : len(rows_before)
    ] == rows_before  # earlier rows kept as written
    assert load_checkpoint(out / "best.pt").train_summary["best_val_acc"] >= 0
    _same(_weights(out / "last.pt"), _weights(tiny_run.last))
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    # Ctrl-C as in a terminal: a background job of a non-interactive shell (a CI runner) starts with SIGINT ignored,
    # which the child would inherit
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnv2export", "train", *TINY_FLAGS, "--epochs", "50", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert _wait_for(lambda: _epochs_done(out) >= 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "--resume" in err and "Traceback" not in err
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt.train_summary["epoch"] >= 1 and "resume" in ckpt.extra


def test_sigterm_is_noted_then_raised_at_the_next_batch():
    """The SIGTERM handler only notes the signal; the loops raise Terminated at their next batch. Raised from the
    handler itself, it was lost when it landed in an at-fork hook (logging's, as a DataLoader worker started)."""
    from mnv2export.errors import Terminated
    from mnv2export.train.signals import raise_if_terminated, sigterm_as_interrupt

    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    reached = []
    with pytest.raises(Terminated):
        with sigterm_as_interrupt():
            raise_if_terminated()  # nothing noted yet
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes: it has run by now, and raised nothing
                pass
            reached.append("after the signal")
            raise_if_terminated()
            reached.append("not reached")
    assert reached == ["after the signal"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
    raise_if_terminated()  # and forgotten: the next run starts clean
    # one that comes after the last batch (the pictures, the last writes) is raised as the block ends, not forgotten:
    # the pipeline would have gone on to export
    after = []
    with pytest.raises(Terminated):
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
            after.append("the rest of the block ran")
    assert after == ["the rest of the block ran"] and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    raise_if_terminated()
    # a caller's own SIGTERM handler is kept
    mine = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
            raise_if_terminated()
    finally:
        signal.signal(signal.SIGTERM, mine)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["process", "process group, loader workers"])
def test_sigterm_saves_and_exits_cleanly_then_resumes(tmp_path, how):
    """`kill PID`, or a whole process group terminated (as a pod or a Slurm job is), used to kill the trainer wherever
    it was: no word of what last.pt held, and possibly between the writes of last.pt and metrics.csv. Now it stops as
    Ctrl-C does: one line saying how to resume, exit 143, files telling the same epoch; --resume goes on from there."""
    out = tmp_path / "run"
    workers = ["--workers", "1"] if "workers" in how else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnv2export", "train", *TINY_FLAGS, *workers, "--epochs", "50", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert _wait_for(lambda: _epochs_done(out) >= 1, proc)
    if "group" in how:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "error: terminated (SIGTERM)", err[-3000:]
    done = load_checkpoint(out / "last.pt").train_summary["epoch"]
    assert (
        f"terminated (SIGTERM) in epoch {done + 1}; {out / 'last.pt'} holds epoch {done}: continue with --resume" in err
    ), err[-3000:]
    assert done >= 1 and _epochs_done(out) == done  # last.pt and metrics.csv tell the same epoch
    r = mnv2("train", "--resume", "--out", str(out), "--epochs", str(done + 1), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert f"at epoch {done + 1} of {done + 1}" in r.stderr and _epochs_done(out) == done + 1


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_process_cleanly(tmp_path):
    """A scheduler stopping a torchrun job sends SIGTERM to the agent, which sends it to every process: each stops at
    its next batch, rank 0 says how to resume, and last.pt and metrics.csv tell the same epoch."""
    out = tmp_path / "run"
    port = 33500 + os.getpid() % 1000
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(port),
            "-m",
            "mnv2export",
            "train",
            *TINY_FLAGS,
            "--epochs",
            "50",
            "--out",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)},
    )
    assert _wait_for(lambda: _epochs_done(out) >= 1, proc, timeout=300)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    done = load_checkpoint(out / "last.pt").train_summary["epoch"]
    assert (
        err.count(
            f"terminated (SIGTERM) in epoch {done + 1}; {out / 'last.pt'} holds epoch {done}: continue with --resume"
        )
        == 1
    ), err[-3000:]
    assert err.count("error: terminated (SIGTERM)") == 2, err[-3000:]  # each process was terminated, and says so
    assert "exited unexpectedly" not in err and "Connection" not in err, err[-3000:]
    assert done >= 1 and _epochs_done(out) == done


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path):
    out = tmp_path / "run"
    r = _torchrun("-m", "mnv2export", "train", *TINY_FLAGS, "--epochs", "2", "--out", str(out), port=29500, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("best val_acc") == 1  # rank 0 alone reports
    ckpt = load_checkpoint(out / "last.pt")
    s = ckpt.train_summary
    assert s["world_size"] == 2 and s["epoch"] == 2
    assert s["data"]["val_images"] == 4 * 50
    # metrics reduced over both ranks: every validation image counted once per epoch
    conf = np.array(s["confusion"])
    assert conf.sum() == 200
    assert _epochs_done(out) == 2


def _evaluate_in_one_process(path):
    """val_loss and val_acc of the checkpoint at ``path``, evaluated by this one process on its whole val set."""
    from mnv2export import distributed as D
    from mnv2export.data import build_datasets
    from mnv2export.model import build_model
    from mnv2export.train import StepContext, evaluate, make_loader

    ckpt = load_checkpoint(path)
    data = build_datasets(ckpt.data_config)
    model = build_model(ckpt.model_config)
    model.load_state_dict(ckpt.state_dict)
    model.to(memory_format=torch.channels_last)
    cpu = torch.device("cpu")
    loader = make_loader(
        data.val, TrainConfig(batch_size=16, workers=0), D.DistInfo(), cpu, train=False, memory=data.val_memory
    )
    m = evaluate(model, loader, StepContext(cpu, None, True), ckpt.model_config.num_classes)
    return m["val_loss"], m["val_acc"]


@pytest.mark.parametrize("ema", [False, True], ids=["model", "ema"])
def test_ddp_val_metrics_are_those_of_the_saved_weights(tmp_path, ema):
    """Each rank ends an epoch with the BatchNorm statistics of its own last batches (DDP gives every rank rank 0's only
    at the start of a forward), and rank 0's are saved: evaluated as they were, the two halves of the val set gave a
    val_loss that was not the saved model's (0.762343 logged, 0.763063 of best.pt). The same for the EMA's buffers."""
    out = tmp_path / "run"
    r = _torchrun_train(
        tmp_path, *TINY_FLAGS, "--epochs", "1", "--ema" if ema else "--no-ema", "--out", str(out), port=35500
    )
    assert r.returncode == 0, r.stderr[-3000:]
    logged = load_checkpoint(out / "last.pt").train_summary["history"][-1]
    for saved in ("last.pt", "best.pt"):
        val_loss, val_acc = _evaluate_in_one_process(out / saved)
        assert val_loss == pytest.approx(logged["val_loss"], rel=1e-5, abs=1e-7), saved
        assert val_acc == pytest.approx(logged["val_acc"], abs=1e-9), saved


def test_ddp_counts_and_names_the_unreadable_images_of_every_rank(tmp_path):
    """Each rank meets its own share of the images: the summary counted rank 0's alone (2 of 3 here), and a train image
    was named again in epoch 2 when it moved to the other rank. Every rank's are gathered: each named once, all counted."""
    from mnv2export.data.synth import write_synth

    root = tmp_path / "d"
    write_synth(root, num_classes=3, per_class=24, size=32, val_per_class=4)
    bad = [
        root / "train" / "00-circle-solid" / "broken.png",
        root / "train" / "01-square-solid" / "broken.png",
        root / "val" / "00-circle-solid" / "00000b.png",
    ]  # the second val image: rank 1's
    bad[0].write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    bad[1].write_bytes(b"\x89PNG\r\n\x1a\nnor this")
    bad[2].write_bytes(b"")
    out = tmp_path / "run"
    r = _torchrun_train(
        tmp_path,
        "--data",
        str(root),
        "--img-size",
        "32",
        "--width",
        "0.35",
        "-b",
        "8",
        "--epochs",
        "2",
        "--workers",
        "0",
        "--no-plots",
        "--no-progress",
        "--out",
        str(out),
        port=36500,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    s = load_checkpoint(out / "last.pt").train_summary
    assert s["images_skipped"] == 3 and sorted(s["skipped_images"]) == sorted(str(p) for p in bad), s["skipped_images"]
    warned = [line for line in r.stderr.splitlines() if "skipped unreadable image" in line]
    assert len(warned) == 3 and all(sum(str(p) + ":" in line for line in warned) == 1 for p in bad), warned
    assert "3 images skipped" in r.stdout


_DIES_IN_EPOCH_2 = """
import os, sys
import mnv2export.train.loop as T
from mnv2export.cli import main

if os.environ["RANK"] == "1":
    real, calls = T.evaluate, []

    def evaluate(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            os._exit(9)  # as a kill -9 in epoch 2
        return real(*a, **k)

    T.evaluate = evaluate
sys.exit(main(sys.argv[1:]))
"""


def test_a_process_that_dies_leaves_the_others_one_line_with_the_resume_hint(tmp_path):
    """Rank 1 killed in epoch 2: rank 0's collective fails with gloo's 'Connection closed by peer', which was printed
    as 'unexpected RuntimeError ... report it'. It is one line saying another process stopped and how to resume.
    (The two processes are started here, not by torchrun, whose agent would end rank 0 before it says anything.)"""
    from mnv2export.distributed import peer_failure

    script = tmp_path / "dies.py"
    script.write_text(_DIES_IN_EPOCH_2)
    out = tmp_path / "run"
    port = str(37500 + os.getpid() % 1000)
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), "train", *TINY_FLAGS, "--epochs", "3", "--out", str(out)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    (_, err0), (_, _) = (p.communicate(timeout=300) for p in procs)
    assert procs[1].returncode == 9
    errors = [line for line in err0.splitlines() if line.startswith("error:")]
    assert procs[0].returncode == 1 and len(errors) == 1, err0[-3000:]
    assert errors[0].startswith("error: another process of the job stopped (") and "unexpected" not in err0
    assert errors[0].endswith(
        f"{out / 'last.pt'} holds epoch 1: continue with --resume (see the other process's error above)"
    )
    # only a collective's failure is turned into it: any other error stays the error it is
    assert (
        peer_failure(RuntimeError("CUDA out of memory")) is None
        and peer_failure(ValueError("Connection reset by peer")) is None
    )


_DDP_SHORT_BATCH = """
import torch
from torch import nn
from mnv2export import distributed as D
from mnv2export.train import StepContext, train_one_epoch

info = D.init("cpu")
torch.manual_seed(0)
model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)))
x, y = torch.randn(8, 3, 2, 2), torch.randint(0, 3, (8,))
sizes = [4, 4] if info.rank == 0 else [4, 1]  # rank 1's second batch lost all but one image (unreadable files)
loader, i = [], 0
for size in sizes:
    loader.append((x[i:i + size], y[i:i + size], []))
    i += size
opt = torch.optim.SGD(model.parameters(), lr=0.1)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
loss, n = train_one_epoch(model, loader, opt, sched, nn.CrossEntropyLoss(), StepContext(torch.device("cpu"), None, False))
print(f"rank {info.rank}: {n} images, {sched.last_epoch} steps", flush=True)
del model  # as fit() leaves it: a DDP model alive after the group is destroyed aborts at exit (1 run in 4 here)
D.shutdown()
"""


def test_a_batch_too_small_on_one_rank_is_passed_over_on_every_rank(tmp_path):
    """Under DDP a rank that passed over a batch alone would leave the others waiting in the gradient all-reduce
    (a hang): every rank passes over it together."""
    script = tmp_path / "short_batch.py"
    script.write_text(_DDP_SHORT_BATCH)
    r = _torchrun(str(script), port=30500, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 0: 4 images, 2 steps" in r.stdout and "rank 1: 4 images, 2 steps" in r.stdout, r.stdout


def test_a_refused_run_folder_under_torchrun_is_one_error_from_rank_0(tmp_path):
    """Only rank 0 checks the folder; the other ranks learn that it refused and leave quietly, instead of each dying in
    a collective with an 'unexpected RuntimeError: Connection closed by peer'."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.md").write_text("someone's")
    r = _torchrun("-m", "mnv2export", "train", *TINY_FLAGS, "--epochs", "1", "--out", str(out), port=31500, timeout=300)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode != 0 and errors == [
        f"error: run folder already holds files ({out}): --resume continues the run in it, "
        "--overwrite replaces it; or choose another --out"
    ], r.stderr[-3000:]
    assert "unexpected" not in r.stderr and sorted(p.name for p in out.iterdir()) == ["notes.md"]


def _torchrun_train(tmp_path, *args, port=33500, timeout=300):
    return _torchrun("-m", "mnv2export", "train", *args, port=port, timeout=timeout, cwd=tmp_path)


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--sync-bn"], "error: SyncBatchNorm runs on CUDA only"),
        (["--device", "cuda"], "error: CUDA was asked for"),
        (["--resume"], "error: nothing to resume"),
    ],
)
def test_an_error_of_the_flags_under_torchrun_is_said_once_before_the_data_is_read(tmp_path, flags, expected):
    """Every rank meets the same error of the flags: rank 0 alone prints it, and a flag that needs no data is checked
    before the data is read (the data here does not exist: its error would come first otherwise)."""
    if "cuda" in flags and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    missing = tmp_path / "no-such-data"
    r = _torchrun_train(
        tmp_path,
        "--data",
        str(missing),
        "--img-size",
        "32",
        "--width",
        "0.35",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--no-plots",
        "--no-progress",
        "--out",
        str(tmp_path / "run"),
        *flags,
    )
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode != 0 and len(errors) == 1 and errors[0].startswith(expected), r.stderr[-3000:]
    assert "joined process group: rank 1" not in r.stderr  # only rank 0 logs


_DDP_STOP_TOGETHER = """
import sys
import tempfile
from mnv2export import distributed as D
from mnv2export.errors import ConfigError

info = D.init("cpu")
for case in ("same", "rank1", "none"):
    error = {"same": ConfigError("bad flag"), "rank1": ConfigError("rank 1's own") if info.rank == 1 else None, "none": None}[case]
    try:
        D.stop_together(error, info)
        said = "went on"
    except ConfigError as exc:
        said = f"raised {exc}"
    except SystemExit:
        said = "quiet"
    print(f"{case} rank {info.rank}: {said}", flush=True)
D.shutdown()
"""


def test_every_rank_stops_together_and_an_error_is_said_by_one_rank(tmp_path):
    """An error every rank met alike is raised by rank 0 alone (the others exit quietly); an error of one rank is
    raised by that rank, the others stop without a word; no error: every rank goes on."""
    script = tmp_path / "stop_together.py"
    script.write_text(_DDP_STOP_TOGETHER)
    r = _torchrun(str(script), port=34500, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    for line in (
        "same rank 0: raised bad flag",
        "same rank 1: quiet",
        "rank1 rank 0: quiet",
        "rank1 rank 1: raised rank 1's own",
        "none rank 0: went on",
        "none rank 1: went on",
    ):
        assert line in r.stdout, r.stdout


def test_sync_bn_on_cpu_is_refused_even_in_one_process(tmp_path, tiny_run):
    """--sync-bn on a 1-process CPU run was recorded without a word, and that run could then not be resumed under
    torchrun ('drop --sync-bn', while --no-sync-bn was refused as a change of the run): refused up front. A CPU run
    that recorded it may drop it when resuming."""
    import dataclasses
    import shutil

    from mnv2export.checkpoint import save_checkpoint

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="SyncBatchNorm runs on CUDA only.*: turn sync_bn off"):
        fit(tiny_run_config(sync_bn=True), run_dir=tmp_path / "new")
    assert not (tmp_path / "new").exists()
    out = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, out)
    ckpt = load_checkpoint(out / "last.pt")
    save_checkpoint(
        dataclasses.replace(
            ckpt, extra={**ckpt.extra, "train_config": {**ckpt.extra["train_config"], "sync_bn": True}}
        ),
        out / "last.pt",
    )
    cfg, ckpt = resume_config(out, {"train": {"epochs": 3}})
    with pytest.raises(ConfigError, match=r"turn sync_bn off \(the resumed run recorded it"):
        fit(cfg, run_dir=out, resume_from=ckpt)
    cfg, ckpt = resume_config(out, {"train": {"epochs": 3, "sync_bn": False}})
    assert fit(cfg, run_dir=out, resume_from=ckpt).summary["epoch"] == 3


def test_fp16_steps_the_gradient_scaler_passed_over_are_told(tmp_path, caplog):
    """At fp16 the gradient scaler passes over the optimizer step while its start-up scale overflows (most of a short
    epoch here): the epoch was reported as trained without a word, beside torch's 'lr_scheduler.step() before
    optimizer.step()' warning, which is about that skip of ours. The epoch log says how many; the warning is gone."""
    import logging
    import warnings

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="mnv2export"):
        warnings.simplefilter("always")
        result = fit(tiny_run_config(amp="fp16", device="cpu"), run_dir=tmp_path / "run")
    assert result.summary["epoch"] == 1
    told = [r.getMessage() for r in caplog.records if "gradient scaler passed over" in r.getMessage()]
    assert len(told) == 1 and told[0].startswith(
        "epoch 1: the fp16 gradient scaler passed over the optimizer step of "
    ), told
    assert int(told[0].split(" of ")[1].split()[-1]) > 0
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)], [str(w.message) for w in caught]


def _overflowing_logits(monkeypatch, every: int):
    """The model fit() builds, its training-mode logits multiplied by inf in every ``every``-th batch (0 * inf is
    NaN): the loss of those batches is NaN, as when a model's outputs overflow fp16."""
    import mnv2export.train.run as T  # where the set-up builds the model

    build = T.build_model
    calls = {"n": 0}

    def overflow(module, inputs, output):
        if module.training:
            calls["n"] += 1
            if calls["n"] % every == 0:
                return output * math.inf
        return None

    def build_overflowing(cfg):
        model = build(cfg)
        model.register_forward_hook(overflow)
        return model

    monkeypatch.setattr(T, "build_model", build_overflowing)


def test_fp16_training_whose_loss_is_nan_in_every_batch_is_diverged_not_saved(tmp_path, monkeypatch):
    """At fp16 a NaN loss in every batch trained nothing (the gradient scaler passed over every step, so the weights
    stayed finite and the weight check saw nothing): the run was saved, 'best' at chance with train_loss nan. It is a
    TrainingDiverged now, before any file of the epoch is written."""
    from mnv2export.errors import TrainingDiverged

    _overflowing_logits(monkeypatch, every=1)
    run = tmp_path / "run"
    with pytest.raises(
        TrainingDiverged,
        match=r"loss was NaN or infinite in every one of its 12 batches.*fp16 gradient scaler.*amp off",
    ):
        fit(tiny_run_config(amp="fp16", device="cpu"), run_dir=run)
    assert not (run / "best.pt").exists()
    assert load_checkpoint(run / "last.pt").train_summary["epoch"] == 0


def test_fp16_batches_with_a_nan_loss_are_told_and_left_out_of_the_mean(tmp_path, monkeypatch, caplog):
    """Some batches' loss NaN at fp16 (their steps passed over): the epoch's train_loss was nan. It is now the mean of
    the other batches, and a warning says how many were left out."""
    import logging

    _overflowing_logits(monkeypatch, every=3)
    with caplog.at_level(logging.WARNING, logger="mnv2export"):
        result = fit(tiny_run_config(amp="fp16", device="cpu"), run_dir=tmp_path / "run")
    told = [r.getMessage() for r in caplog.records if "loss was NaN or infinite" in r.getMessage()]
    assert told == [
        "epoch 1: the loss was NaN or infinite in 4 batch(es) (fp16 overflow in the forward pass; their optimizer steps "
        "were passed over): train_loss is the mean of the others"
    ], told
    assert math.isfinite(result.summary["final"]["train_loss"])


def test_cuda_asked_without_gpu_is_an_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ProviderUnavailable, match="CUDA was asked for"):
        fit(tiny_run_config(device="cuda"), run_dir=tmp_path / "r")


def test_training_goes_on_past_unreadable_images(tmp_path):
    from mnv2export.data.synth import write_synth

    root = tmp_path / "d"
    write_synth(root, num_classes=3, per_class=8, size=32, val_per_class=4)
    (root / "train" / "00-circle-solid" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "val" / "01-square-solid" / "empty.jpg").write_bytes(b"")
    cfg = tiny_run_config(epochs=2)
    cfg = RunConfig(cfg.model, cfg.data.replace(source=str(root)), cfg.train)
    result = fit(cfg, run_dir=tmp_path / "run")
    assert result.summary["images_skipped"] == 2 and result.summary["epoch"] == 2
    assert len(load_checkpoint(result.best).class_names) == 3  # num_classes follows the data


def test_a_new_run_whose_inputs_end_at_1x1_says_so_once(tmp_path, tiny_run, caplog):
    """32 px through torchvision's total stride of 32 ends at 1x1 before the pooling: a new run says so once, with
    --small-input; a resumed run does not say it again, and a small-input run (4x4) has nothing to say."""
    import logging
    import shutil

    def told(cfg, **kw):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mnv2export"):
            fit(cfg, **kw)
        return [r.getMessage() for r in caplog.records if "end at 1x1" in r.getMessage()]

    cfg = tiny_run_config()
    assert told(cfg, run_dir=tmp_path / "new") == [
        "the model's total stride is 32: 32 px images end at 1x1 before the classifier's pooling, so its deepest layers "
        "see no spatial layout; for 28-64 px images pass --small-input (total stride 8: 28 px ends at 4x4)"
    ]
    shutil.copytree(tiny_run.run_dir, tmp_path / "resumed")
    resumed, ckpt = resume_config(tmp_path / "resumed", {"train": {"epochs": 3}})
    assert told(resumed, run_dir=tmp_path / "resumed", resume_from=ckpt) == []
    assert told(RunConfig(cfg.model.replace(small_input=True), cfg.data, cfg.train), run_dir=tmp_path / "small") == []


def test_a_new_run_on_sideways_phone_photos_says_so_and_one_with_exif_orientation_does_not(tmp_path, caplog):
    """Photos a phone stored sideways (an EXIF orientation tag) train as stored unless --exif-orientation: a new run
    reads the tags of up to 64 training images and says how many are sideways, once, with the flag to pass."""
    import logging

    from mnv2export.data.synth import write_synth

    root = tmp_path / "d"
    write_synth(root, num_classes=3, per_class=8, size=32, val_per_class=4)
    exif = Image.Exif()
    exif[0x0112] = 6
    for path in sorted((root / "train").rglob("*.png"))[::5]:  # 5 of the 24
        Image.open(path).convert("RGB").save(path, exif=exif)
    cfg = tiny_run_config()
    cfg = RunConfig(cfg.model, cfg.data.replace(source=str(root)), cfg.train)
    with caplog.at_level(logging.WARNING, logger="mnv2export"):
        fit(cfg, run_dir=tmp_path / "run")
    told = [r.getMessage() for r in caplog.records if "EXIF orientation tag" in r.getMessage()]
    assert told == [
        "5 of 24 training images looked at carry an EXIF orientation tag (photos stored sideways, as phones do): "
        "they train as stored; pass --exif-orientation to train on them upright"
    ], told
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mnv2export"):
        fit(RunConfig(cfg.model, cfg.data.replace(exif_orientation=True), cfg.train), run_dir=tmp_path / "run2")
    assert not [r for r in caplog.records if "EXIF" in r.getMessage()]


def test_ema_decay_warms_up():
    from mnv2export.train.optim import ema_decay_at

    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.999, 90) == pytest.approx(0.91)
    assert ema_decay_at(0.999, 10**6) == 0.999
    assert all(ema_decay_at(0.999, n) <= ema_decay_at(0.999, n + 1) for n in range(0, 20000, 97))


def test_ema_model_answers_like_the_model_it_averages():
    """A few hundred steps at a high learning rate: the EMA (weights and BatchNorm statistics) must classify like the
    trained model. Without the decay warm-up it stayed at its random start (0.047 against 1.0 on this batch)."""
    from torch.optim.swa_utils import AveragedModel

    from mnv2export.config import ModelConfig
    from mnv2export.device import cpu_threads
    from mnv2export.model import build_model
    from mnv2export.train.optim import ema_update_fn

    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=10, width_mult=0.35, small_input=True, stem_stride=2))
    ema = AveragedModel(model, multi_avg_fn=ema_update_fn(0.998), use_buffers=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(32, 3, 28, 28), torch.arange(32) % 10
    with cpu_threads(1):
        for _ in range(150):
            model.train()
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ema.update_parameters(model)
        model.eval(), ema.eval()
        with torch.no_grad():
            acc = (model(x).argmax(1) == y).float().mean().item()
            ema_acc = (ema.module(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.9 and ema_acc >= 0.7  # chance: 0.1; the average lags the model by its ~20-step horizon here
    tracked = dict(ema.module.named_buffers())["features.0.1.num_batches_tracked"]
    assert tracked.dtype == torch.long and int(tracked) == 150


def test_bad_data_or_weights_leave_no_run_folder(tmp_path):
    from mnv2export.errors import CheckpointError, DataError

    (tmp_path / "d" / "train" / "a").mkdir(parents=True)
    (tmp_path / "d" / "val" / "a").mkdir(parents=True)
    cfg = tiny_run_config().override({}, {"source": str(tmp_path / "d")}, {})
    with pytest.raises(DataError, match="no images"):
        fit(cfg, run_dir=tmp_path / "runs" / "r")
    assert (tmp_path / "runs").is_dir() and not (tmp_path / "runs" / "r").exists()
    with pytest.raises(CheckpointError, match="initial weights"):
        fit(tiny_run_config(init_from=str(tmp_path / "missing.pth")), run_dir=tmp_path / "runs" / "w")
    assert not (tmp_path / "runs" / "w").exists()


def test_a_new_run_never_lands_silently_in_a_used_folder(tmp_path):
    """A second run into a run folder is refused (the first run's files intact) unless --overwrite, which replaces
    the run's own files only once the data and model are ready; a folder that holds no run is never overwritten."""
    from mnv2export.errors import ConfigError, DataError

    out = tmp_path / "run"
    first = fit(tiny_run_config(), run_dir=out)
    (out / "confusion_matrix.png").write_bytes(b"a picture of the first run")
    (out / "notes.md").write_text("mine")
    (out / "visualize").mkdir()
    for name in ("kernels.png", "notes.txt"):
        (out / "visualize" / name).write_text("x")
    before = first.best.read_bytes()
    with pytest.raises(ConfigError, match="already holds files"):
        fit(tiny_run_config(seed=1), run_dir=out)
    assert first.best.read_bytes() == before
    empty_data = tmp_path / "d"
    (empty_data / "train" / "a").mkdir(parents=True)
    (empty_data / "val" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):  # bad data: the earlier run is not touched
        fit(tiny_run_config().override({}, {"source": str(empty_data)}, {}), run_dir=out, overwrite=True)
    assert first.best.read_bytes() == before and (out / "confusion_matrix.png").is_file()
    second = fit(tiny_run_config(seed=1), run_dir=out, overwrite=True)
    assert second.best.read_bytes() != before
    assert not (out / "confusion_matrix.png").exists()  # the first run's picture would describe another model
    assert (out / "notes.md").read_text() == "mine"  # not the run's file: kept
    assert sorted(p.name for p in (out / "visualize").iterdir()) == ["notes.txt"]  # visualize's own pictures only went
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("x")
    with pytest.raises(ConfigError, match="not a training run"):
        fit(tiny_run_config(), run_dir=mine, overwrite=True)
    with pytest.raises(ConfigError, match="contradict"):
        fit(tiny_run_config(), run_dir=out, overwrite=True, resume_from=load_checkpoint(out / "last.pt"))


def _config_json(folder: Path, legacy: bool = False) -> Path:
    """``folder/config.json`` as a run writes it at start-up (``legacy``: as versions before its schema marker did)."""
    from mnv2export.train.run_folder import run_config_json

    folder.mkdir(parents=True, exist_ok=True)
    cfg = tiny_run_config().with_absolute_paths()
    (folder / "config.json").write_text(json.dumps(cfg.to_dict()) if legacy else run_config_json(cfg))
    return folder / "config.json"


def test_overwrite_refuses_a_folder_whose_config_json_is_not_a_run(tmp_path, capsys):
    """A folder holding someone's own config.json was taken for a run: --overwrite deleted it (and any best.pt or
    metrics.csv beside it). Only a config.json a run wrote (its schema marker, or the keys an older version wrote)
    proves the folder is a run; anything else is refused in one line, every file intact."""
    from mnv2export.cli import main
    from mnv2export.train.run_folder import check_run_folder

    mine = tmp_path / "app"
    mine.mkdir()
    (mine / "config.json").write_text('{"name": "my app", "port": 8080}')
    (mine / "metrics.csv").write_text("requests,latency\n")
    code = main(["train", *TINY_FLAGS, "--epochs", "1", "--out", str(mine), "--overwrite"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(
        f"error: config.json is not a training run's (no mnv2export marker or run settings) ({mine / 'config.json'}): "
    ), err
    assert (mine / "config.json").read_text() == '{"name": "my app", "port": 8080}' and (mine / "metrics.csv").is_file()
    (mine / "config.json").unlink()
    with pytest.raises(ConfigError, match="folder is not a training run"):  # metrics.csv alone proves nothing
        check_run_folder(mine, overwrite=True)
    for legacy in (False, True):  # a run's config.json, with the marker or as older versions wrote it: a run
        run = tmp_path / f"run-{legacy}"
        _config_json(run, legacy)
        (run / "metrics.csv").write_text("epoch\n")
        check_run_folder(run, overwrite=True)


def test_a_run_that_stopped_before_its_first_checkpoint_is_not_stuck(tmp_path, monkeypatch, capsys):
    """A full disk at the first checkpoint write (or a kill during start-up) left config.json alone in the folder:
    --resume said 'start a new run without --resume' and a new run said 'use --resume'. Now --resume starts the run
    from epoch 0 with its config.json settings, and a new run may start there too (no checkpoint to lose)."""
    import mnv2export.train.loop as T
    from mnv2export.cli import main
    from mnv2export.errors import CheckpointError, OutputError
    from mnv2export.train.run_folder import check_run_folder

    def disk_full(*a, **k):
        raise OutputError("disk full while writing", hint="free some space")

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(T, "save_checkpoint", disk_full)
        with pytest.raises(OutputError):
            fit(tiny_run_config(epochs=1, seed=3), run_dir=out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    cfg, ckpt = resume_config(out, {"train": {"epochs": None}})
    assert ckpt is None and cfg.train.seed == 3 and cfg.train.epochs == 1  # the run's own settings
    with pytest.raises(ConfigError, match="cannot change train.seed"):
        resume_config(out, {"train": {"seed": 4}})
    check_run_folder(out, overwrite=False)  # a new run there is not refused either
    (out / ".last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")  # a kill during the write leaves one: no obstacle
    assert main(["train", "--resume", "--out", str(out)]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "last.pt", "metrics.csv"]
    last = load_checkpoint(out / "last.pt")
    assert last.train_summary["epoch"] == 1 and last.extra["train_config"]["seed"] == 3
    # config.json and best.pt but no last.pt: results to lose, so not started again without --overwrite
    (out / "last.pt").unlink()
    with pytest.raises(CheckpointError, match="no last.pt, but the run saved best.pt, metrics.csv") as info:
        resume_config(out, {})
    assert "{overwrite}" in info.value.hint
    with pytest.raises(ConfigError, match="already holds files"):
        check_run_folder(out, overwrite=False)


def test_a_stopped_start_resumes_from_a_config_json_of_an_older_version(tmp_path):
    """The config.json of a version that wrote no schema marker is recognised by its sections."""
    from mnv2export.errors import CheckpointError
    from mnv2export.train.run_folder import check_run_folder

    out = tmp_path / "run"
    _config_json(out, legacy=True)
    cfg, ckpt = resume_config(out, {"train": {"epochs": 2}})
    assert ckpt is None and cfg.train.epochs == 2 and cfg.model.width_mult == 0.35
    check_run_folder(out, overwrite=False)
    (out / "config.json").write_text('{"model": {}, "data": {}, "train": {}}')  # the sections, but no run's settings
    with pytest.raises(CheckpointError, match="nothing to resume: no last.pt in the run folder"):
        resume_config(out, {})


def test_two_runs_cannot_write_one_folder_at_once(tmp_path, monkeypatch):
    import threading

    import mnv2export.train.run_folder as R
    from mnv2export.errors import ConfigError
    from mnv2export.fileio import folder_lock

    out = tmp_path / "run"
    out.mkdir()
    monkeypatch.setattr(R, "RUN_LOCK_WAIT_S", 0.5)
    with folder_lock(out, "held by the test", "-"):  # as another process's fit holds it (flock: per open file)
        with pytest.raises(ConfigError, match="another process is training into this run folder"):
            fit(tiny_run_config(), run_dir=out)
    assert not any(out.iterdir())
    # a holder that lets go within the wait (a killed run's DataLoader workers exiting) is waited for, not an error
    monkeypatch.setattr(R, "RUN_LOCK_WAIT_S", 20.0)
    held = threading.Event()

    def hold_briefly():
        with folder_lock(out, "-", "-"):
            held.set()
            time.sleep(1.5)

    holder = threading.Thread(target=hold_briefly)
    holder.start()
    held.wait()
    started = time.monotonic()
    result = fit(tiny_run_config(), run_dir=out)
    holder.join()
    assert result.best.is_file() and time.monotonic() - started >= 1.0


def test_a_run_that_waited_for_the_folder_lock_checks_the_folder_as_it_finds_it(tmp_path, monkeypatch):
    """Two new runs into one folder started together: the second waits for the lock while the first trains, and once
    the first is done it must find the folder holding a run and be refused, not replace it without a word. Likewise a
    --resume whose last.pt another process advanced meanwhile. (The other run's work is done here while fit waits.)"""
    import dataclasses
    import shutil

    import mnv2export.train.run_folder as R
    from mnv2export.checkpoint import save_checkpoint
    from mnv2export.fileio import folder_lock

    done = tmp_path / "done"
    fit(tiny_run_config(), run_dir=done)

    def first_run_finishes_while_waiting(folder, *a, **k):
        if not (Path(folder) / "last.pt").exists():
            for name in ("last.pt", "best.pt", "config.json", "metrics.csv"):
                shutil.copy(done / name, Path(folder) / name)
        return folder_lock(folder, *a, **k)

    out = tmp_path / "run"
    monkeypatch.setattr(R, "folder_lock", first_run_finishes_while_waiting)
    with pytest.raises(ConfigError, match="already holds files"):
        fit(tiny_run_config(seed=7), run_dir=out)
    assert (out / "best.pt").read_bytes() == (done / "best.pt").read_bytes()

    cfg, ckpt = resume_config(out, {"train": {"epochs": 2}})
    advanced = dataclasses.replace(ckpt, train_summary={**ckpt.train_summary, "epoch": 2})

    def other_resume_trains_while_waiting(folder, *a, **k):
        save_checkpoint(advanced, Path(folder) / "last.pt")
        return folder_lock(folder, *a, **k)

    monkeypatch.setattr(R, "folder_lock", other_resume_trains_while_waiting)
    with pytest.raises(ConfigError, match="changed since --resume read"):
        fit(cfg, run_dir=out, resume_from=ckpt)
    assert load_checkpoint(out / "last.pt").train_summary["epoch"] == 2


def test_an_epoch_that_trained_nothing_is_an_error(tmp_path):
    """Every batch passed over (all but one image per batch unreadable): the epoch trained nothing, and no
    'train_loss 0.0000 (best)' checkpoint may say otherwise."""
    from mnv2export.errors import DataError

    root = tmp_path / "d"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            if split == "val" or cls == "a":  # one readable training image in all: no batch can have two
                Image.new("RGB", (32, 32), (200, 0, 0) if cls == "a" else (0, 0, 200)).save(
                    root / split / cls / "ok.png"
                )
    for i in range(7):
        (root / "train" / ("a" if i < 3 else "b") / f"broken{i}.png").write_bytes(b"not a png")
    cfg = tiny_run_config(batch_size=4).override({}, {"source": str(root)}, {})
    with pytest.raises(DataError, match="no training batch in epoch 1 had two readable images"):
        fit(cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "best.pt").exists()


def test_an_epoch_that_validated_nothing_is_an_error(tmp_path):
    """No validation image readable: there is no accuracy to judge the epoch by, and no 'val_acc 0.00% (best)'
    checkpoint may say otherwise."""
    from mnv2export.errors import DataError

    root = tmp_path / "d"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(4 if split == "train" else 2):
                if split == "train":
                    Image.new("RGB", (32, 32), (200, 0, 0) if cls == "a" else (0, 0, 200)).save(
                        root / split / cls / f"{i}.png"
                    )
                else:
                    (root / split / cls / f"{i}.png").write_bytes(b"not a png")
    cfg = tiny_run_config(batch_size=4).override({}, {"source": str(root)}, {})
    with pytest.raises(DataError, match="no validation image could be read in epoch 1"):
        fit(cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "best.pt").exists()


def _two_class_folder(root, per_class=4):
    for split in ("train", "val"):
        for cls, colour in (("a", (200, 0, 0)), ("b", (0, 0, 200))):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class if split == "train" else 2):
                Image.new("RGB", (32, 32), colour).save(root / split / cls / f"{i}.png")


def test_resume_refuses_other_classes_or_another_training_set(tmp_path, caplog):
    """A run resumes on its own data. A renamed class folder (same count) gave every label after it another meaning;
    more training images made the saved schedule run past its end (its cosine rising again). Both are refused, naming
    the change; a file changed in place is warned about and the run goes on."""
    import logging
    import shutil

    from mnv2export.errors import DataError

    root, out = tmp_path / "d", tmp_path / "run"
    _two_class_folder(root)
    cfg = tiny_run_config(epochs=1, batch_size=4).override({}, {"source": str(root)}, {})
    fit(cfg, run_dir=out)

    def resume():
        c, ckpt = resume_config(out, {"train": {"epochs": 2}})
        return fit(c, run_dir=out, resume_from=ckpt)

    for split in ("train", "val"):
        (root / split / "b").rename(root / split / "c")
    with pytest.raises(DataError, match=r"the classes changed since the run started \(gone: b; new: c\)"):
        resume()
    for split in ("train", "val"):
        (root / split / "c").rename(root / split / "b")
    shutil.copy(root / "train" / "a" / "0.png", root / "train" / "a" / "extra.png")
    with pytest.raises(DataError, match=r"the training set changed since the run started \(8 images, now 9\)"):
        resume()
    (root / "train" / "a" / "extra.png").unlink()
    Image.new("RGB", (32, 32), (190, 10, 0)).save(
        root / "train" / "a" / "0.png", compress_level=0
    )  # another size, same name
    with caplog.at_level(logging.WARNING, logger="mnv2export"):
        assert resume().summary["epoch"] == 2
    assert "the data changed since the run started" in caplog.text
    assert load_checkpoint(out / "last.pt").train_summary["epoch"] == 2


def test_a_relative_data_folder_is_recorded_as_an_absolute_path(tmp_path, monkeypatch):
    """`mnv2 train --data ds` recorded 'ds': `mnv2 export` / `check` run from another directory then found no
    calibration or labelled data. The checkpoint records where the data is; a resume may still name it relatively."""
    monkeypatch.chdir(tmp_path)
    _two_class_folder(tmp_path / "ds")
    result = fit(tiny_run_config(epochs=1, batch_size=4).override({}, {"source": "ds"}, {}), run_dir="run")
    assert load_checkpoint(result.best).data_config.source == str(tmp_path / "ds")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["source"] == str(tmp_path / "ds")
    cfg, _ = resume_config(tmp_path / "run", {"data": {"source": "ds"}, "train": {"epochs": 2}})
    assert cfg.data.source == str(tmp_path / "ds")
    with pytest.raises(ConfigError, match="cannot change data.source"):
        resume_config(tmp_path / "run", {"data": {"source": "other"}})


def test_resume_refuses_fewer_epochs_than_done(tiny_run):
    """--epochs below what the run has done would rewrite config.json with a length last.pt does not have."""
    with pytest.raises(ConfigError, match="epochs = 1 is fewer than the 2 the run has done"):
        resume_config(tiny_run.run_dir, {"train": {"epochs": 1}})
    cfg, _ = resume_config(tiny_run.run_dir, {"train": {"epochs": 2}})  # as many: nothing to train, not an error
    assert cfg.train.epochs == 2


def test_resuming_a_finished_run_says_there_is_nothing_to_train(tmp_path, tiny_run, caplog):
    """It said 'resuming ... at epoch 3 of 2', then 'the run already has 2 epochs'; now the one line that is true."""
    import logging
    import shutil

    run = shutil.copytree(tiny_run.run_dir, tmp_path / "run")
    cfg, ckpt = resume_config(run, {"train": {"epochs": 2}})
    with caplog.at_level(logging.INFO, logger="mnv2export"):
        result = fit(cfg, run_dir=run, resume_from=ckpt)
    said = [r.getMessage() for r in caplog.records]
    assert (
        f"the run in {run} already has 2 epoch(s) of 2: nothing to train; pass a larger --epochs to train further"
        in said
    )
    assert not [m for m in said if m.startswith(("resuming", "epoch "))] and result.summary["epoch"] == 2


def test_zero_init_residual_applies_to_a_fresh_model_only(tmp_path, caplog):
    import logging

    # lr 1e-9: one epoch leaves every weight where it started, so the saved weights show the initialisation
    residual_bns = [f"features.{i}.conv.3.weight" for i in (3, 5, 6, 8, 9, 10, 12, 13, 15, 16)]
    fresh = load_checkpoint(
        fit(tiny_run_config(zero_init_residual=True, lr=1e-9), run_dir=tmp_path / "z").best
    ).state_dict
    for name in residual_bns:
        assert fresh[name].abs().max() < 1e-6, name
    assert torch.all((fresh["features.2.conv.3.weight"] - 1).abs() < 1e-6)  # the first block of a stage has no shortcut
    plain = load_checkpoint(fit(tiny_run_config(lr=1e-9), run_dir=tmp_path / "p").best).state_dict
    for name in residual_bns:
        assert torch.all((plain[name] - 1).abs() < 1e-6), name

    torch.save(plain, tmp_path / "init.pth")  # weights given with --init-from are kept
    cfg = tiny_run_config(zero_init_residual=True, lr=1e-9, init_from=str(tmp_path / "init.pth"))
    with caplog.at_level(logging.WARNING, logger="mnv2export"):
        loaded = load_checkpoint(fit(cfg, run_dir=tmp_path / "i").best).state_dict
    assert "--zero-init-residual not applied" in caplog.text  # asked for and not done: a warning, not a -v notice
    for name in residual_bns:
        assert torch.all((loaded[name] - 1).abs() < 1e-6), name


def _fashion_config(tmp_path, monkeypatch, **train):
    from conftest import write_fashion_idx

    from mnv2export.config import run_config

    monkeypatch.setenv("MNV2_CACHE", str(tmp_path / "cache"))
    folder = write_fashion_idx(tmp_path / "idx", n_train=80, n_test=20)
    settings = {
        "epochs": 2,
        "batch_size": 16,
        "lr": 0.05,
        "workers": 0,
        "plots": False,
        "progress": False,
        "seed": 0,
        "warmup_epochs": 0.0,
        **train,
    }
    return run_config(
        None,
        {"width_mult": 0.35, "small_input": True, "stem_stride": 2},
        {"source": "fashion-mnist", "data_dir": str(folder), "img_size": 28, "train_aug": "crop_pad", "pad": 2},
        settings,
    )


@pytest.mark.parametrize("world_size", [1, 2, 3])  # 3 does not divide the 20 validation images
def test_in_memory_loader_batches_each_epoch_like_the_data_loader(tmp_path, monkeypatch, world_size):
    from mnv2export.data import build_datasets
    from mnv2export.data.memory import MemoryLoader
    from mnv2export.distributed import DistInfo
    from mnv2export.train import make_loader

    cfg = _fashion_config(tmp_path, monkeypatch, batch_size=12)
    data = build_datasets(cfg.data)
    for train, ds, memory in ((True, data.train, data.train_memory), (False, data.val, data.val_memory)):
        memory.labels = torch.arange(len(ds))  # so that a batch's labels are its indices

        def epoch(rank, e, memory=memory, ds=ds, train=train):
            info = DistInfo(rank=rank, world_size=world_size)
            batched = make_loader(ds, cfg.train, info, torch.device("cpu"), train=train, epoch=e, memory=memory)
            assert isinstance(batched, MemoryLoader)
            assert len(batched) == len(make_loader(ds, cfg.train, info, torch.device("cpu"), train=train, epoch=e)) > 0
            batches = [y.tolist() for x, y, skipped in batched]
            assert len(batches) == len(batched) and not any(skipped for _, _, skipped in batched)
            assert all(len(b) == cfg.train.batch_size for b in batches[:-1])
            return [i for b in batches for i in b]

        shares = [epoch(rank, 3) for rank in range(world_size)]
        seen = [i for share in shares for i in share]
        if train:  # shuffled, the last partial batch dropped, each image at most once per rank
            assert all(len(set(share)) == len(share) for share in shares)
            assert len(seen) >= len(ds) - world_size * cfg.train.batch_size
            assert shares[0] == epoch(0, 3) and shares[0] != epoch(0, 4)  # an epoch's order is its own and repeatable
        else:  # every image exactly once over the ranks (no padding with repeats), each rank's share in order
            assert sorted(seen) == list(range(len(ds))) and all(share == sorted(share) for share in shares)
            if world_size == 1:
                assert seen == list(range(len(ds)))


def test_in_memory_training_resumes_exactly(tmp_path, monkeypatch):
    """Fashion-MNIST goes through the in-memory path; interrupted after epoch 1 and resumed, it ends where an
    uninterrupted run ends (augmentation randomness included)."""
    cfg = _fashion_config(tmp_path, monkeypatch)
    whole = fit(cfg, run_dir=tmp_path / "whole")
    _cut_after_first_epoch_then_resume(cfg, tmp_path / "cut", monkeypatch)
    _same(_weights(tmp_path / "cut" / "last.pt"), _weights(whole.last))
    assert (
        whole.history[-1]["val_acc"] == load_checkpoint(tmp_path / "cut" / "last.pt").train_summary["final"]["val_acc"]
    )


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_schedule_warms_up_then_decays_to_zero_at_the_last_step(schedule):
    from mnv2export.config import TrainConfig
    from mnv2export.train.optim import build_scheduler

    steps, epochs = 10, 4  # warm-up 0.5 epoch = 5 steps, then 35 steps of decay
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.2)
    sched = build_scheduler(opt, TrainConfig(epochs=epochs, lr=0.2, warmup_epochs=0.5, schedule=schedule), steps)
    lrs = []
    for _ in range(epochs * steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    lrs.append(opt.param_groups[0]["lr"])  # after the last step
    assert lrs[0] == pytest.approx(0.2e-3) and lrs[5] == pytest.approx(0.2)
    assert all(a < b for a, b in zip(lrs[:5], lrs[1:6])) and all(a > b for a, b in zip(lrs[5:], lrs[6:]))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    drops = np.diff(lrs[5:])
    if schedule == "linear":  # equal steps down: 0.2 / 35 each
        assert np.allclose(drops, -0.2 / 35)
    else:  # cosine: gentle at both ends, steepest in the middle
        assert abs(drops[0]) < abs(drops[17]) > abs(drops[-1])


def test_unknown_schedule_is_a_config_error():
    from mnv2export.config import TrainConfig

    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="step")


# --------------------------------------------------------------------------------------------------- optimizer set-up
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_weight_decay_on_conv_and_linear_weights_only(optimizer):
    """README: 'no weight decay on norm and bias parameters' (SGD and AdamW alike)."""
    from mnv2export.model import build_model
    from mnv2export.train.optim import build_optimizer

    model = build_model(ModelConfig(num_classes=4, width_mult=0.35))
    names = {id(p): n for n, p in model.named_parameters()}
    opt = build_optimizer(model, TrainConfig(optimizer=optimizer, weight_decay=0.01))
    seen = {}
    for group in opt.param_groups:
        for p in group["params"]:
            seen[names[id(p)]] = group["weight_decay"]
    assert set(seen) == set(names.values())  # every parameter trained, once
    norm_weights = [n for n, p in model.named_parameters() if p.ndim == 1 and not n.endswith(".bias")]
    assert norm_weights  # BatchNorm scales
    for n, p in model.named_parameters():
        expected = 0.0 if (p.ndim <= 1 or n.endswith(".bias")) else 0.01
        assert seen[n] == expected, n


def test_depthwise_weight_decay_applies_to_the_depthwise_convolutions_only():
    """--depthwise-weight-decay: the 17 depthwise 3x3 convolutions of MobileNetV2 get their own rate; the stem, the
    pointwise convolutions and the classifier keep --weight-decay, norm and bias parameters none."""
    from mnv2export.model import build_model
    from mnv2export.train.optim import build_optimizer

    model = build_model(ModelConfig(num_classes=4, width_mult=0.35))
    depthwise = {
        n + ".weight"
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels > 1
    }
    assert len(depthwise) == 17
    names = {id(p): n for n, p in model.named_parameters()}
    seen = {}
    for group in build_optimizer(model, TrainConfig(weight_decay=0.01, depthwise_weight_decay=0.001)).param_groups:
        for p in group["params"]:
            seen[names[id(p)]] = group["weight_decay"]
    assert set(seen) == set(names.values())
    for n, p in model.named_parameters():
        expected = 0.0 if (p.ndim <= 1 or n.endswith(".bias")) else 0.001 if n in depthwise else 0.01
        assert seen[n] == expected, n
    assert seen["features.0.0.weight"] == 0.01  # the stem: a full convolution on 3 channels
    # unset: the depthwise weights decay as the others, in the same two groups as before the option existed
    groups = build_optimizer(model, TrainConfig(weight_decay=0.01)).param_groups
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    with pytest.raises(ConfigError, match="depthwise_weight_decay"):
        TrainConfig(depthwise_weight_decay=-0.1)


def test_sgd_momentum_and_nesterov_are_passed_through():
    from mnv2export.train.optim import build_optimizer

    model = nn.Linear(3, 2)
    opt = build_optimizer(model, TrainConfig(momentum=0.8, nesterov=True))
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["momentum"] == 0.8 and g["nesterov"] is True for g in opt.param_groups)
    opt = build_optimizer(model, TrainConfig(momentum=0.8, nesterov=False))
    assert all(g["nesterov"] is False for g in opt.param_groups)
    opt = build_optimizer(model, TrainConfig(momentum=0.0, nesterov=True))  # Nesterov needs momentum: quietly off
    assert all(g["momentum"] == 0.0 and g["nesterov"] is False for g in opt.param_groups)


def test_label_smoothing_reaches_the_training_loss(tmp_path, monkeypatch):
    import mnv2export.train.loop as T

    real, criteria = T.train_one_epoch, []

    def spy(model, loader, opt, sched, criterion, *a, **k):
        criteria.append(criterion)
        return real(model, loader, opt, sched, criterion, *a, **k)

    monkeypatch.setattr(T, "train_one_epoch", spy)
    T.fit(tiny_run_config(label_smoothing=0.2), run_dir=tmp_path / "run")
    assert len(criteria) == 1 and isinstance(criteria[0], nn.CrossEntropyLoss)
    assert criteria[0].label_smoothing == 0.2


# --------------------------------------------------------------------------------------------------- the loops
def _batches(x, y, sizes):
    out, i = [], 0
    for s in sizes:
        out.append((x[i : i + s], y[i : i + s], []))
        i += s
    return out


def test_train_one_epoch_sums_the_loss_over_samples():
    """(sum of losses over samples, count): with unequal batches a per-batch mean summed is not that."""
    from mnv2export.train import StepContext, train_one_epoch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.randn(10, 3, 2, 2), torch.randint(0, 3, (10,))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # weights stay put: the expected losses are computable
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y, reduction="sum").item()
    loss_sum, n = train_one_epoch(
        model,
        _batches(x, y, [4, 4, 2]),
        opt,
        sched,
        nn.CrossEntropyLoss(),
        StepContext(torch.device("cpu"), None, False),
    )
    assert n == 10 and loss_sum == pytest.approx(expected, rel=1e-5)


def test_batches_too_small_to_train_still_step_the_schedule():
    """A batch left with one image (the others unreadable) cannot train BatchNorm (at 1x1 maps it raises mid-epoch)
    and an empty one has nothing to learn: both are passed over, but the schedule still counts them, so it ends at
    its last step (lr 0 with cosine)."""
    from mnv2export.train import StepContext, train_one_epoch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    x, y = torch.randn(7, 3, 2, 2), torch.randint(0, 3, (7,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / 4)  # 4 batches: lr 0 after the last
    loader = [(x[:1], y[:1], []), (x[1:4], y[1:4], []), (x[:0], y[:0], []), (x[4:7], y[4:7], [])]
    loss_sum, n = train_one_epoch(
        model, loader, opt, sched, nn.CrossEntropyLoss(), StepContext(torch.device("cpu"), None, False)
    )
    assert n == 6 and math.isfinite(loss_sum)
    assert sched.last_epoch == 4 and opt.param_groups[0]["lr"] == 0.0


def test_evaluate_loss_accuracy_confusion_and_their_sum_over_ranks(monkeypatch):
    import mnv2export.distributed as D
    from mnv2export.train import StepContext, evaluate

    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.randn(11, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0])
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(1)
    confusion = np.zeros((3, 3), int)
    for t, p in zip(y.tolist(), pred.tolist()):
        confusion[t, p] += 1  # rows: true class, columns: predicted
    assert not np.array_equal(confusion, confusion.T)  # so that a transposed matrix is told apart
    ctx, loader = StepContext(torch.device("cpu"), None, False), _batches(x, y, [4, 4, 3])
    m = evaluate(model, loader, ctx, 3)
    assert m["count"] == 11 and m["confusion"] == confusion.tolist()
    assert m["val_loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)  # mean over samples
    assert m["val_acc"] == pytest.approx((pred == y).float().mean().item())

    # two ranks holding the same shard: every sum doubles, the means do not move
    monkeypatch.setattr(D, "all_reduce_sum", lambda values, info: values * 2)
    m2 = evaluate(model, loader, ctx, 3)
    assert m2["count"] == 22 and m2["confusion"] == (2 * confusion).tolist()
    assert m2["val_loss"] == pytest.approx(m["val_loss"]) and m2["val_acc"] == pytest.approx(m["val_acc"])


def test_train_loss_is_summed_over_ranks(tmp_path, monkeypatch):
    """The epoch's train_loss is (loss sum, count) reduced over ranks, with the batches whose loss was not finite (none
    here, and none on the faked second rank) and their images: a second rank is faked here."""
    import mnv2export.distributed as D
    import mnv2export.train.loop as T

    real, local = T.train_one_epoch, []

    def spy(*a, **k):
        local.append(real(*a, **k))
        return local[-1]

    def fake_reduce(values, info):
        if (
            sys._getframe(1).f_code.co_name == "_train_pass"
        ):  # the trainer's (loss sum, count, non-finite batches, their images)
            return values + torch.tensor([100.0, 4.0, 0.0, 0.0], dtype=values.dtype)
        return values

    monkeypatch.setattr(T, "train_one_epoch", spy)
    monkeypatch.setattr(D, "all_reduce_sum", fake_reduce)
    result = T.fit(tiny_run_config(), run_dir=tmp_path / "run")
    loss_sum, n = local[0]
    assert result.history[0]["train_loss"] == pytest.approx((loss_sum + 100.0) / (n + 4))


def test_only_rank_0_writes(tmp_path, monkeypatch):
    import mnv2export.distributed as D
    import mnv2export.train.loop as T

    monkeypatch.setattr(D, "init", lambda device_type: D.DistInfo(rank=1, local_rank=0, world_size=1))
    result = T.fit(tiny_run_config(), run_dir=tmp_path / "run")
    assert not result.is_main and len(result.history) == 1
    assert not (tmp_path / "run").exists()


def test_the_last_partial_training_batch_is_dropped():
    """A training batch of one image would break BatchNorm (one value per channel at the 1 x 1 head); the
    validation loader keeps every image."""
    from mnv2export.distributed import DistInfo
    from mnv2export.train import make_loader

    ds = [(torch.zeros(3, 2, 2), i % 2) for i in range(17)]
    cfg = TrainConfig(batch_size=8, workers=0)
    train = list(make_loader(ds, cfg, DistInfo(), torch.device("cpu"), train=True))
    assert [len(y) for _, y, _ in train] == [8, 8]
    val = list(make_loader(ds, cfg, DistInfo(), torch.device("cpu"), train=False))
    assert [len(y) for _, y, _ in val] == [8, 8, 1]


# --------------------------------------------------------------------------------------------------- EMA, best.pt, resume
def test_ema_weights_are_what_is_evaluated_and_saved(tmp_path):
    """README: 'the EMA weights are evaluated and saved'; the EMA is updated once per step."""
    from mnv2export.train import fit

    result = fit(tiny_run_config(ema=True), run_dir=tmp_path / "run")
    last = load_checkpoint(result.last)
    ema, model = last.extra["resume"]["ema"], last.extra["resume"]["model"]
    assert int(ema["n_averaged"]) == 192 // 16  # one update per step of the epoch
    for ckpt in (load_checkpoint(result.best), last):
        for k, v in ckpt.state_dict.items():
            assert torch.equal(v, ema[f"module.{k}"]), k
    assert any(not torch.equal(model[k], ema[f"module.{k}"]) for k in model if model[k].is_floating_point())


def test_ema_update_moves_the_average_by_one_minus_the_decay():
    """EMA: average <- decay * average + (1 - decay) * current, decay = min(ema_decay, (1 + n) / (10 + n))."""
    from mnv2export.train.optim import ema_update_fn

    update = ema_update_fn(0.999)
    for n, decay in ((1, 2 / 11), (90, 0.91), (10**6, 0.999)):
        averaged, current = [torch.zeros(3)], [torch.ones(3)]
        update(averaged, current, torch.tensor(n))
        assert torch.allclose(averaged[0], torch.full((3,), 1 - decay)), n


def _interrupt_after_first_epoch(T, cfg, out, monkeypatch, accs=None):
    real, calls = T.evaluate, []

    def evaluate_then_stop(*a, **k):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        m = real(*a, **k)
        if accs is not None:
            m["val_acc"] = accs[0]
        return m

    with monkeypatch.context() as m:
        m.setattr(T, "evaluate", evaluate_then_stop)
        with pytest.raises(KeyboardInterrupt):
            T.fit(cfg, run_dir=out)


def _scripted(T, monkeypatch, accs):
    real, it = T.evaluate, iter(accs)

    def scripted(*a, **k):
        m = real(*a, **k)
        m["val_acc"] = next(it)
        return m

    monkeypatch.setattr(T, "evaluate", scripted)


def test_resume_with_ema_continues_exactly(tmp_path, monkeypatch):
    """last.pt carries the EMA for --resume: the resumed run ends with the uninterrupted run's EMA (and best.pt)."""
    import mnv2export.train.loop as T

    cfg = tiny_run_config(epochs=2, ema=True)
    whole = T.fit(cfg, run_dir=tmp_path / "whole")
    _interrupt_after_first_epoch(T, cfg, tmp_path / "cut", monkeypatch)
    cfg2, ckpt = resume_config(tmp_path / "cut", {"train": {"epochs": None}})
    T.fit(cfg2, run_dir=tmp_path / "cut", resume_from=ckpt)
    a, b = load_checkpoint(whole.last), load_checkpoint(tmp_path / "cut" / "last.pt")
    for k, v in a.extra["resume"]["ema"].items():
        assert torch.equal(v, b.extra["resume"]["ema"][k]), k
    for k, v in a.state_dict.items():
        assert torch.equal(v, b.state_dict[k]), k


def test_best_pt_is_the_epoch_with_the_best_val_accuracy(tmp_path, monkeypatch):
    import mnv2export.train.loop as T

    _scripted(T, monkeypatch, [0.9, 0.5])
    result = T.fit(tiny_run_config(epochs=2), run_dir=tmp_path / "run")
    best = load_checkpoint(result.best)
    assert best.train_summary["epoch"] == 1 and best.train_summary["best_epoch"] == 1
    assert best.train_summary["best_val_acc"] == 0.9 and result.summary["best_epoch"] == 1


def test_resume_keeps_the_best_epoch_of_before_the_interruption(tmp_path, monkeypatch):
    import mnv2export.train.loop as T

    cfg, out = tiny_run_config(epochs=3), tmp_path / "run"
    _interrupt_after_first_epoch(T, cfg, out, monkeypatch, accs=[0.9])
    cfg2, ckpt = resume_config(out, {"train": {"epochs": None}})
    _scripted(T, monkeypatch, [0.5, 0.7])  # epochs 2 and 3: worse than epoch 1
    result = T.fit(cfg2, run_dir=out, resume_from=ckpt)
    assert result.summary["best_epoch"] == 1 and result.summary["best_val_acc"] == 0.9
    assert load_checkpoint(result.best).train_summary["epoch"] == 1


def test_default_run_folders_of_one_second_do_not_collide(tmp_path, monkeypatch):
    """Two runs with the default --out started in the same second: the second gets weights/<data>-<time>-2, not the
    first's folder (which it would be refused, or which it would have overwritten before the folder check)."""
    from mnv2export.train.run_folder import default_run_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt: "20261125-020000")
    cfg = tiny_run_config()
    first = default_run_dir(cfg)
    assert first == Path("weights") / "synth-20261125-020000"
    first.mkdir(parents=True)
    assert default_run_dir(cfg) == Path("weights") / "synth-20261125-020000-2"
