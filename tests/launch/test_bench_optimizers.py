"""launch.bench.optimizers: a tiny real run, its outputs, and its user errors."""

from __future__ import annotations

import json

import pytest
from absl import flags
from absl.testing import flagsaver

from launch.bench import optimizers as bench


def run_bench(argv: list[str]) -> int:
    """``python -m launch.bench.optimizers ARGV`` in this process; returns the exit status."""
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        try:
            bench.run(["launch.bench.optimizers", *argv])
        except SystemExit as e:
            return 0 if e.code is None else int(e.code)
    return 0


def test_small_run_writes_json_plot_and_table(tmp_path):
    argv = ["--sizes=4K", "--optimizers=adam,lars,lookahead", "--timed_steps=2", "--warmup=1",
            "--xla=off", "--noisolate", f"--output_dir={tmp_path}"]  # fmt: skip
    assert run_bench(argv) == 0

    result = json.loads((tmp_path / "optimizers.json").read_text())
    rows = result["rows"]
    assert [(r["optimizer"], r["implementation"]) for r in rows] == [
        ("adam", "tfopt"), ("adam", "keras"), ("lars", "tfopt"), ("lookahead", "tfopt"),
    ]  # fmt: skip
    # Adam: variable, m and v read and written, the gradient read: 7 fp32 arrays.
    assert rows[0]["bytes_per_step"] == 7 * 4 * 4096
    assert rows[2]["bytes_per_step"] == 5 * 4 * 4096  # LARS: variable and momentum.
    assert rows[3]["bytes_per_step"] == pytest.approx(7 * 4 * 4096 + 16 / 6 * 4096)
    for r in rows:
        assert r["params"] == 4096 and r["xla"] is False and len(r["step_ms_all"]) == 2
        assert r["step_ms"] > 0 and r["roof_triad_ms"] > 0 and r["roof_kernel_ms"] > 0
        assert r["roof_gb_per_s"] == pytest.approx(
            12 * 4096 / min(r["roof_triad_ms"], r["roof_kernel_ms"]) / 1e6)
        # The fraction is the roof's time for these bytes over the step's time.
        roof_time = r["bytes_per_step"] / (r["roof_gb_per_s"] * 1e6)
        assert r["fraction_of_roof"] == pytest.approx(roof_time / r["step_ms"])
    assert result["machine"]["cpu_count"] >= 1 and result["git"]

    table = (tmp_path / "optimizers.md").read_text().splitlines()
    assert len(table) == 2 + 3  # Header, rule, one line per tfopt optimizer.
    assert "| adam | 4K | off |" in table[2] and "| Adam |" in table[2]
    assert table[3].endswith("| none | | | |")  # LARS has no Keras counterpart.
    assert (tmp_path / "optimizers.png").read_bytes()[:4] == b"\x89PNG"


def test_isolated_groups_run_in_a_child_process(tmp_path):
    # The default: each (optimizer, size) in a fresh spawned process.
    argv = ["--sizes=1K", "--optimizers=sgd", "--nokeras", "--xla=off", "--timed_steps=1",
            "--warmup=0", f"--output_dir={tmp_path}"]  # fmt: skip
    assert run_bench(argv) == 0
    (row,) = json.loads((tmp_path / "optimizers.json").read_text())["rows"]
    assert (row["optimizer"], row["class"], row["params"]) == ("sgd", "SGD", 1024)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sizes=12G"], "Received: '12G'"),
        (["--optimizers=adam,nadam"], "Received: nadam"),
        (["--timed_steps=0"], "timed_steps"),
        (["extra"], "unexpected positional arguments ['extra']"),
    ],
    ids=["size", "optimizer", "timed_steps", "positional"],
)
def test_user_errors_exit_2_with_one_line(argv, message, capsys, tmp_path):
    assert run_bench([*argv, f"--output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("launch.bench.optimizers: error:") and message in err
    assert "\n" not in err and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("text", "count"), [("1M", 1 << 20), ("64K", 65536), ("1000", 1000), ("16m", 16 << 20)]
)
def test_parse_size(text, count):
    assert bench.parse_size(text) == count
