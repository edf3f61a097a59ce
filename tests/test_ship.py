"""What to ship: the benchmark's fastest file that passed its parity check, per provider and batch."""

from __future__ import annotations

import json

import pytest

from mnv2export.bench.result import BenchResult, BenchRow
from mnv2export.bench.ship import read_check, recommend, to_markdown
from mnv2export.errors import ConfigError


def _row(fmt, p50, provider="cpu", batch=1, path=None, **kw):
    path = path or {"eager": "best.pt", "onnx": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}.get(
        fmt.split("+")[0], f"{fmt}.bin"
    )
    return BenchRow(fmt, provider, batch, p50_ms=p50, path=f"/x/{path}", speedup_vs_eager=10.0 / p50, **kw)


def _check(*rows):
    return {
        "rows": [{"artifact": a, "provider": p, "status": s, "metrics": m, "failures": f} for a, p, s, m, f in rows]
    }


def test_the_fastest_checked_file_is_chosen_and_faster_failures_are_named():
    bench = BenchResult(
        rows=[_row("eager", 10.0), _row("onnx", 4.0), _row("int8", 2.0), _row("torchscript", 8.0)], machine={}
    )
    check = _check(
        ("model.onnx", "cpu", "pass", {"acc_drop_pts": 0.0, "top1_agreement": 100.0}, []),
        ("model.int8.onnx", "cpu", "fail", {"acc_drop_pts": 2.5}, ["acc_drop_pts 2.5 > 1.0"]),
    )
    (choice,) = recommend(bench, check)
    assert (choice.format, choice.file, choice.p50_ms, choice.acc_drop_pts) == ("onnx", "model.onnx", 4.0, 0.0)
    assert choice.speedup_vs_eager == pytest.approx(2.5)
    assert choice.passed_over == ["int8 (2 ms): parity fail: acc_drop_pts 2.5 > 1.0"]
    table = to_markdown([choice])
    assert "| cpu | 1 | onnx (`model.onnx`) | 4 | 2.50x | +0.00 pts | int8 (2 ms): parity fail" in table


def test_eager_qualifies_autocast_and_unchecked_rows_do_not_and_each_batch_and_provider_is_its_own():
    rows = [
        _row("eager", 10.0),
        _row("eager+amp", 3.0),
        _row("onnx", 5.0),  # not in the check on the CPU
        _row("eager", 9.0, batch=8),
        _row("onnx", 1.0, provider="tensorrt"),
        _row("onnx", 4.0, provider="cuda", io="copies"),  # host copies in the timer: not what the choice reads
        _row("fp16", 0.5, status="error"),  # failed rows are not candidates at all
    ]
    choices = recommend(BenchResult(rows=rows, machine={}), _check())
    by = {(c.provider, c.batch): c for c in choices}
    assert set(by) == {("cpu", 1), ("cpu", 8), ("tensorrt", 1)}
    assert by["cpu", 1].format == "eager" and by["cpu", 8].format == "eager"
    assert [s.split(":")[0] for s in by["cpu", 1].passed_over] == ["eager+amp (3 ms)", "onnx (5 ms)"]
    assert by["tensorrt", 1].format is None and "does not run the tensorrt provider" in by["tensorrt", 1].passed_over[0]
    assert "nothing qualified" in to_markdown(choices)


def test_a_check_file_is_read_with_its_fields_checked(tmp_path):
    good = tmp_path / "check.json"
    good.write_text(json.dumps(_check(("model.onnx", "cpu", "pass", {}, []))))
    assert read_check(good)["rows"][0]["artifact"] == "model.onnx"
    for text, said in (("{", "cannot be read"), ('{"rows": [{"artifact": 1}]}', "not a `mnv2 check --json` result")):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(ConfigError, match=said):
            read_check(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="check result not found"):
        read_check(tmp_path / "missing.json")


def test_bench_with_a_check_result_ends_with_what_to_ship(trained_checkpoint, exported, tmp_path, capsys):
    from mnv2export.cli import main

    check_json, bench_json = tmp_path / "check.json", tmp_path / "bench.json"
    args = ["check", str(trained_checkpoint), "--artifacts", str(exported.out_dir), "--samples", "16"]
    assert main([*args, "--json", str(check_json)]) == 0, capsys.readouterr()
    capsys.readouterr()
    bench = ["bench", str(exported.out_dir), "--formats", "eager,onnx", "--provider", "cpu", "--batch", "1"]
    bench += ["--iters", "3", "--warmup", "1", "--threads", "1", "--check", str(check_json), "--json", str(bench_json)]
    assert main(bench) == 0
    out = capsys.readouterr().out
    assert "What to ship" in out and "| cpu | 1 |" in out
    (ship,) = json.loads(bench_json.read_text())["ship"]
    assert ship["provider"] == "cpu" and ship["format"] in ("eager", "onnx")
    assert main([*bench[:-4], "--check", str(tmp_path / "none.json")]) == 1
    assert "check result not found" in capsys.readouterr().err
