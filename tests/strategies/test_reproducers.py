"""The upstream reproducers (`make test-upstream`): each reproduces its bug on the pinned stack.

On the versions the workarounds were verified for (keras 3.15, TF 2.21), a
reproducer must say "still broken": otherwise it does not reproduce anything,
and its "fixed upstream" on the nightlies would mean nothing. The in-process
ones run here; those needing two logical CPUs or two workers run in fresh
processes under ``make test-upstream`` (docs/upstream.md records both).
"""

from __future__ import annotations

import pytest

from strategies.compat import _keras_compat
from strategies.compat import _reproducers as reproducers

IN_PROCESS = ("final_ema_overwrite", "ram_rename_directory", "ram_prefix_is_directory")


@pytest.mark.parametrize("name", IN_PROCESS)
def test_reproducer_reproduces_on_the_pinned_stack(name):
    import keras
    import tensorflow as tf

    if (_keras_compat._major_minor(keras.__version__) not in _keras_compat.VERIFIED_KERAS
            or _keras_compat._major_minor(tf.__version__) not in _keras_compat.VERIFIED_TENSORFLOW):
        pytest.skip("not the pinned stack: make test-upstream reports what it finds there")
    by_name = {r.name: r for r in reproducers.REPRODUCERS}
    assert by_name[name].run() == reproducers.BROKEN


def test_every_compat_section_has_a_reproducer_or_says_why_not():
    covered = {r.workaround.split(" (")[0] for r in reproducers.REPRODUCERS}
    covered |= {w.split(" (")[0] for w, _, _ in reproducers.NOT_REPRODUCED}
    assert covered == {f"_keras_compat section {n}" for n in (1, 2, 3, 4, 5, 6, 7)}


def test_requirements_leave_tensorflow_and_keras_to_the_nightlies():
    names = reproducers.requirements()
    assert names and not [n for n in names if n.split(">")[0].split("<")[0].split("=")[0] in ("tensorflow", "keras")]
    assert any(n.startswith("pytest") for n in names)


def test_report_holds_the_table_the_versions_and_the_suite():
    results = {r.name: reproducers.BROKEN for r in reproducers.REPRODUCERS}
    page = reproducers.report(results, "exit 0: 10 passed")
    assert "tensorflow" in page and "keras" in page and "exit 0: 10 passed" in page
    assert page.count("still broken") == len(reproducers.REPRODUCERS)


def test_report_keeps_the_notes_written_by_hand(tmp_path):
    path = tmp_path / "upstream.md"
    path.write_text("# old report\n\n" + reproducers.NOTES_MARKER + "\n## Investigated\n\nby hand\n")
    notes = reproducers.kept_notes(str(path))
    page = reproducers.report({r.name: reproducers.BROKEN for r in reproducers.REPRODUCERS}, "exit 0", notes)
    assert "# old report" not in page and page.rstrip().endswith("## Investigated\n\nby hand")
    assert reproducers.kept_notes(str(tmp_path / "missing.md")) == ""


def test_suite_counts_the_version_guards_refusals_apart(tmp_path):
    from strategies.compat import _upstream_suite

    xml = tmp_path / "suite.xml"
    refusal = _keras_compat.KerasCompatError.__name__ + ": strategies.fit needs a workaround for x"
    launcher = "launch.train: error: ... for y, which was written and tested for keras 3.15.x ..."
    xml.write_text(
        '<testsuites><testsuite>'
        f'<testcase classname="tests.strategies.test_fit" name="a"><failure message="{refusal}">tb</failure></testcase>'
        f'<testcase classname="tests.launch.test_train" name="b"><error message="setup">{launcher}</error></testcase>'
        '<testcase classname="tests.strategies.test_fit" name="c"><failure message="AssertionError: 1 != 2&#10;more">'
        'tb</failure></testcase>'
        '<testcase classname="tests.strategies.test_fit" name="d"/>'
        '</testsuite></testsuites>')  # fmt: skip
    refused, others = _upstream_suite.classify(str(xml))
    assert refused == {"tests/strategies/test_fit.py": 1, "tests/launch/test_train.py": 1}
    assert others == ["FAILED tests/strategies/test_fit.py::c - AssertionError: 1 != 2"]
    text = _upstream_suite.summary("exit 1: 1 passed, 2 failed, 1 error", refused, others)
    assert "Refused by a version guard (expected, by design): 2 " in text
    assert "Other failures and errors (to investigate): 1" in text and others[0] in text
