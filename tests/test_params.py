"""The one vocabulary: list parsing, choices and range checks, and errors that name parameters (rendered as flags)."""

from __future__ import annotations

import pytest

from mnv2export.errors import ConfigError, Mnv2Error
from mnv2export.params import check_choice, check_int, check_ints, check_number, choose, is_int, split_items


def test_split_items_strips_lowers_and_refuses_empty_items():
    assert split_items(" CPU, cuda ", "providers") == ["cpu", "cuda"]
    assert split_items(["a", "b,c"], "formats") == ["a", "b", "c"]
    assert split_items("", "formats") == []
    with pytest.raises(ConfigError, match=r"empty item in the formats list 'a,,b'"):
        split_items("a,,b", "formats")


def test_choose_orders_items_and_says_which_were_named():
    allowed = ("cpu", "cuda", "tensorrt")
    assert choose("tensorrt,cpu", allowed, "providers") == (["cpu", "tensorrt"], True)
    assert choose("all", allowed, "providers", everything=("cpu", "cuda")) == (["cpu", "cuda"], False)
    assert choose("all,tensorrt", allowed, "providers", everything=("cpu",)) == (["cpu", "tensorrt"], False)
    with pytest.raises(ConfigError) as err:
        choose("cpu,gpu", allowed, "providers")
    assert str(err.value) == "unknown providers gpu: choose from cpu, cuda, tensorrt or all"
    assert err.value.parameters == ["providers"]


def test_range_checks_refuse_bools_non_finite_and_out_of_range():
    assert check_int("threads", 4, 1) == 4
    assert check_number("lr", 0.1, 0.0, 10.0, lo_open=True) == 0.1
    assert check_ints("batches", [1, 32]) == [1, 32]
    assert check_choice("calib_method", "minmax", ("minmax", "entropy")) == "minmax"
    for bad in (0, True, 1.5, "2"):
        with pytest.raises(ConfigError, match=r"threads = .* is out of range: use a whole number >= 1"):
            check_int("threads", bad, 1)
    with pytest.raises(ConfigError, match=r"between 1 and 10 \(why\)"):
        check_int("top_k", 11, 1, 10, why=" (why)")
    for bad in (0.0, float("nan"), float("inf"), True, 11):
        with pytest.raises(ConfigError, match="lr = .* is out of range"):
            check_number("lr", bad, 0.0, 10.0, lo_open=True)
    for bad in ([], [0], [True], (1, 2.0), None):
        with pytest.raises(ConfigError, match="batches = .* is out of range"):
            check_ints("batches", bad)
    with pytest.raises(ConfigError, match="unknown calib_method 'x': choose one of minmax, entropy"):
        check_choice("calib_method", "x", ("minmax", "entropy"))
    assert is_int(3) and not is_int(True) and not is_int(3.0)


def test_an_error_names_parameters_bare_in_the_library_and_as_flags_in_the_cli():
    exc = Mnv2Error("{calib_size} = 0 is out of range", path="/tmp/{x}", hint="set {calib_size} or {quantize}")
    assert str(exc) == "calib_size = 0 is out of range (/tmp/{x}): set calib_size or quantize"
    flags = {"calib_size": "--calib-size", "quantize": "--quantize"}
    assert exc.one_line(flags) == "--calib-size = 0 is out of range (/tmp/{x}): set --calib-size or --quantize"
    assert exc.parameters == ["calib_size", "calib_size", "quantize"]


def test_the_flag_table_comes_from_the_app():
    from mnv2export.cli.flags import flag_names

    names = flag_names()
    assert names["calib_size"] == "--calib-size" and names["threads"] == "--threads"
    assert names["batches"] == "--batch" and names["providers"] == "--provider"
    assert names["formats"] == "--format" and flag_names("bench")["formats"] == "--formats"
    assert all(flag.startswith("--") for flag in names.values())


def test_the_cli_prints_a_library_parameter_as_its_flag(capsys):
    from mnv2export.cli import main

    assert main(["export", "missing.pt", "--calib-size", "0", "--quantize"]) == 1
    err = capsys.readouterr().err
    assert "--calib-size" in err and "calib_size" not in err
