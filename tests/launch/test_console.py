"""launch._console and launch._provenance: the error line, the exit codes, the machine record."""

from __future__ import annotations

import sys

import pytest
from absl import flags
from absl.testing import flagsaver

from launch import _console, _provenance


def test_fail_prints_one_error_line_and_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _console.fail("launch.x", "bad\n  value:\tthis")
    assert exit_info.value.code == _console.EXIT_USAGE == 2
    assert capsys.readouterr().err == "launch.x: error: bad value: this\n"


def test_positional_arguments_are_a_usage_error(capsys):
    _console.check_no_positional("launch.x", ["prog"])
    with pytest.raises(SystemExit):
        _console.check_no_positional("launch.x", ["prog", "stray"])
    assert capsys.readouterr().err.startswith("launch.x: error: unexpected positional arguments ['stray']")


def test_a_bad_flag_is_one_line_and_exit_2(capsys):
    parse = _console.flags_parser("launch.x")
    with flagsaver.flagsaver(), pytest.raises(SystemExit) as exit_info:
        flags.FLAGS.unparse_flags()
        parse(["prog", "--no_such_flag_anywhere=1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("launch.x: error:") and "no_such_flag_anywhere" in err and err.count("\n") == 1


def test_machine_record_has_one_shape():
    record = _provenance.machine(device="CPU:0")
    assert list(record)[:7] == ["platform", "processor", "python", "cpu_count", "tensorflow", "keras", "git"]
    assert record["device"] == "CPU:0" and record["cpu_count"] >= 1
    assert record["python"] == ".".join(map(str, sys.version_info[:3]))
    assert record["git"] == _provenance.UNKNOWN or record["git"].split("+")[0].isalnum()
