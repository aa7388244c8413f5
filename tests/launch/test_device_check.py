"""launch.device_check: the real --quick run, injected faults, a missing GPU, its user errors.

The runs are real processes (``python -m launch.device_check``), as a user or
the device machine starts them: the command's workers are child processes
that must start, be timed and be killed from outside.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from absl import flags
from absl.testing import flagsaver

from launch import device_check
from launch.device_check import _catalog as catalog
from launch.device_check import _kernels as _device_kernels

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECK_KEYS = {"name", "status", "reason", "what", "layout", "box_s", "seconds", "device", "metrics"}


def run_device_check(tmp_path, *argv: str, timeout: float = 400,
                     env: dict[str, str] | None = None) -> tuple[int, dict, str]:  # fmt: skip
    """Runs the command; returns its exit status, device_check.json and device_check.md."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "launch.device_check", f"--output_dir={out}", *argv],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip
    assert (out / "device_check.json").exists(), proc.stderr[-3000:]
    report = json.loads((out / "device_check.json").read_text())
    table = (out / "device_check.md").read_text()
    assert table in proc.stdout  # It prints the table it writes.
    return proc.returncode, report, table


def _by_name(report: dict) -> dict[str, dict]:
    names = [c["name"] for c in report["checks"]]
    assert len(names) == len(set(names))
    return {c["name"]: c for c in report["checks"]}


def _assert_schema(report: dict, profile: str, names: list[str]) -> None:
    assert report["schema"] == "device_check/1" and report["profile"] == profile
    assert {"device", "tensorflow", "keras", "python", "platform", "git"} <= set(report["machine"])
    assert report["date"].endswith("UTC") and report["wall_seconds"] > 0
    assert [c["name"] for c in report["checks"]] == names
    for c in report["checks"]:
        assert CHECK_KEYS <= set(c), c["name"]
        assert c["status"] in catalog.STATUSES and c["reason"], c["name"]
    assert sum(report["counts"].values()) == len(names)


@pytest.fixture(scope="module")
def quick(tmp_path_factory, digits_dir):
    """The whole --quick profile, once, as ``make test`` runs it.

    With loose time boxes: the suite shares 2 cores with other work, and a
    check timed out by load would say nothing about the check. The boxes
    themselves are tested with injected hangs below.
    """
    tmp = tmp_path_factory.mktemp("quick")
    code, report, table = run_device_check(
        tmp, "--quick", f"--data_dir={digits_dir}", "--time_budget_s=900", "--check_timeout_s=150",
        timeout=1200,
    )  # fmt: skip
    return code, report, table, tmp / "out"


@pytest.mark.slow
def test_quick_profile_reports_every_check_with_a_status(quick):
    code, report, table, out = quick
    names = [c.name for c in catalog.checks(catalog.QUICK)]
    _assert_schema(report, "quick", names)
    checks = _by_name(report)
    for name in names:
        assert f"| {name} | **{checks[name]['status']}** |" in table
    assert f"TensorFlow {report['machine']['tensorflow']}" in table and report["date"] in table

    accel = checks["accelerators"]
    if accel["status"] == catalog.PASS:  # A machine with a GPU.
        assert report["machine"]["device"].startswith("GPU:")
    else:  # No GPU: MISSING, with the reason, never a pass; the CPU stood in.
        assert accel["status"] == catalog.MISSING and "no GPU" in accel["reason"]
        assert report["accelerator"]["status"] == catalog.MISSING
        assert "no accelerator was checked (the CPU stood in)" in report["summary"]
        assert "**Accelerator:** MISSING" in table
        assert all(c["device"].startswith("CPU") for c in report["checks"])

    # Every CPU stand-in check ran and passed, except the overflow on two
    # replicas, which is reported as it is on the code present.
    for name in names:
        if name not in ("accelerators", "mixed_precision_two"):
            assert checks[name]["status"] == catalog.PASS, (name, checks[name]["reason"])
    two = checks["mixed_precision_two"]
    assert two["metrics"]["replicas"] == 2
    assert two["metrics"]["overflow_skipped_everywhere"] is (two["status"] == catalog.PASS)
    if two["status"] == catalog.FAILED:
        assert "overflow" in two["reason"] and two["metrics"]["overflow_problems"]
    assert code == (0 if two["status"] == catalog.PASS else 1)

    assert checks["job_mirrored"]["metrics"]["replicas"] == 2
    assert checks["job_mirrored"]["metrics"]["all_reduce"] not in ("", "unknown")
    assert checks["mixed_precision_one"]["metrics"]["overflow_skipped_everywhere"] is True
    for name in ("xla_cnn", "xla_convnet"):
        assert checks[name]["metrics"]["step_ms_xla_on"] > 0

    (fused,) = [checks[n] for n in names if n.startswith("fused_kernels")]
    rows = fused["metrics"]["rows"]
    assert [(r["optimizer"], r["xla"]) for r in rows] == [
        (o, x) for o in _device_kernels.OPTIMIZERS for x in (False, True)
    ]
    for r in rows:
        assert r["ok"] is (None if r["optimizer"] == "lamb" else True)
        assert r["tfopt_ms"] > 0 and r["roof_gb_per_s"] > 0
        assert r["tfopt_fraction_of_roof"] == pytest.approx(
            r["bytes_per_step"] / (r["roof_gb_per_s"] * 1e9) / (r["tfopt_ms"] / 1e3)
        )
        assert ("keras_ms" in r) is (r["optimizer"] in (
            "gradient_descent", "sgd_momentum", "adagrad", "adam", "lamb", "lazy_adam"))
        assert r["roof_gb_per_s"] == pytest.approx(max(r["triad_gb_per_s"], r["tf_kernel_gb_per_s"]))
    # Each worker's log comes back with the report: one per device layout.
    assert sorted(p.name for p in out.iterdir()) == [
        "device_check.json", "device_check.md", "worker-accelerators.log", "worker-job_mirrored.log"
    ]
    assert "## Fused kernels vs the memory roof" in table and "| lamb | 256K | on | no fused kernel |" in table

    second = checks["second_order"]["metrics"]
    assert [(r["model"], r["optimizer"]) for r in second["rows"]] == [
        ("digits_cnn", o) for o in ("adamw", "shampoo", "soap")]
    for r in second["rows"]:
        assert r["step_ms"] > 0 and r["x_adamw"] > 0
        assert f"| digits_cnn | {r['batch']} | {r['optimizer']} | {r['step_ms']:.2f} |" in table
    assert "## Second-order step cost vs AdamW" in table and "Shampoo" in checks["second_order"]["reason"]


def test_injected_faults_are_reported_failed_and_timeout(tmp_path):
    # A check that raises, one that kills its process, one that hangs past its box.
    code, report, table = run_device_check(
        tmp_path, "--quick", "--checks=accelerators,job_auto,xla_cnn,job_mirrored",
        "--inject_fault=job_auto=fail,xla_cnn=crash,job_mirrored=hang", "--check_timeout_s=4",
    )  # fmt: skip
    _assert_schema(report, "quick", ["accelerators", "job_auto", "xla_cnn", "job_mirrored"])
    checks = _by_name(report)
    assert code == 1
    assert checks["accelerators"]["status"] in (catalog.PASS, catalog.MISSING)
    assert checks["job_auto"]["status"] == catalog.FAILED
    assert "injected failure" in checks["job_auto"]["reason"]
    assert checks["xla_cnn"]["status"] == catalog.FAILED
    assert "worker process died (exit status 70)" in checks["xla_cnn"]["reason"]
    assert checks["job_mirrored"]["status"] == catalog.TIMEOUT
    assert "time box" in checks["job_mirrored"]["reason"]
    assert "| job_mirrored | **TIMEOUT** |" in table
    assert report["counts"] == {"PASS": report["counts"]["PASS"], "FAILED": 2, "TIMEOUT": 1,
                                "MISSING": report["counts"]["MISSING"], "SKIPPED": 0}  # fmt: skip


def test_full_profile_without_gpu_reports_missing_not_pass(tmp_path):
    code, report, table = run_device_check(tmp_path, "--checks=accelerators,job_auto,job_mirrored")
    checks = _by_name(report)
    if checks["accelerators"]["status"] == catalog.PASS:
        pytest.skip("this machine has a GPU: the full profile runs instead of reporting MISSING")
    _assert_schema(report, "full", ["accelerators", "job_auto", "job_mirrored"])
    assert code == 0  # Nothing failed; nothing passed either.
    assert report["counts"]["PASS"] == 0
    for name in ("accelerators", "job_auto", "job_mirrored"):
        assert checks[name]["status"] == catalog.MISSING, name
    assert "no GPU" in checks["job_auto"]["reason"] and "--quick" in checks["job_auto"]["reason"]
    assert checks["job_auto"]["seconds"] is None  # Never started.


def test_machine_without_tensorflow_reports_failed_with_the_import_error(tmp_path):
    # As on a GPU image that has no TensorFlow: the parent needs none, the workers fail to start.
    broken = tmp_path / "site" / "tensorflow"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('no TensorFlow on this machine')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(broken.parent), ROOT])}
    code, report, _ = run_device_check(tmp_path, env=env)
    checks = _by_name(report)
    assert code == 1 and report["counts"]["PASS"] == 0
    for c in catalog.checks(catalog.FULL):
        if c.layout == catalog.ONE:
            assert checks[c.name]["status"] == catalog.FAILED, c.name
            assert "no TensorFlow on this machine" in checks[c.name]["reason"]
        else:  # Not run: without a working `accelerators` the full profile stops there.
            assert checks[c.name]["status"] == catalog.SKIPPED, c.name


def test_time_budget_spent_skips_the_rest(tmp_path):
    code, report, _ = run_device_check(
        tmp_path, "--quick", "--checks=accelerators,job_auto", "--inject_fault=accelerators=hang",
        "--time_budget_s=3", "--startup_timeout_s=60",
    )  # fmt: skip
    checks = _by_name(report)
    # The budget ran out during the start-up or the hung first check; nothing is a pass.
    accel = checks["accelerators"]["status"]
    assert accel in (catalog.TIMEOUT, catalog.SKIPPED)
    assert code == (1 if accel == catalog.TIMEOUT else 0)
    assert checks["job_auto"]["status"] == catalog.SKIPPED
    assert "--time_budget_s" in checks["job_auto"]["reason"]


def test_sigterm_kills_the_worker_and_still_writes_the_report(tmp_path):
    # An outer `timeout` sends SIGTERM; the worker leads its own session, so
    # only the parent can end it, and the report must still come out.
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch.device_check", "--quick", "--checks=accelerators,job_auto",
         "--inject_fault=accelerators=hang", f"--output_dir={out}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # The parent reports each check's start on stderr: stop it inside the hung check.
    began = time.monotonic()
    for line in proc.stderr:
        if "launch.device_check: accelerators: started" in line or time.monotonic() - began > 120:
            break
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    report = json.loads((out / "device_check.json").read_text())
    checks = _by_name(report)
    assert checks["accelerators"]["status"] == catalog.TIMEOUT
    assert "stopped by SIGTERM during this check" in checks["accelerators"]["reason"]
    assert checks["job_auto"]["status"] == catalog.SKIPPED
    assert "stopped by SIGTERM" in checks["job_auto"]["reason"]
    assert proc.returncode == 1
    with pytest.raises(ProcessLookupError):  # The worker was killed and reaped: no orphan.
        os.kill(checks["accelerators"]["worker_pid"], 0)


def _parse_error(argv: list[str], capsys) -> str:
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        with pytest.raises(SystemExit) as exit_info:
            device_check.run(["launch.device_check", *argv])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, names",
    [(["--checks=accelerators,nope"], "nope"),
     (["--inject_fault=job_auto=explode"], "job_auto=explode"),
     (["--inject_fault=nope=fail"], "nope=fail"),
     (["--time_budget_s=0"], "time_budget_s"),
     (["extra"], "extra")],
    ids=["unknown_check", "unknown_fault", "fault_on_unknown_check", "zero_budget", "positional"],
)  # fmt: skip
def test_bad_flags_exit_2_naming_the_input(argv, names, capsys):
    err = _parse_error(argv, capsys)
    assert err.startswith("launch.device_check: error:") and names in err and "Traceback" not in err


def test_catalog_fits_eight_minutes_and_names_are_unique():
    for profile in (catalog.FULL, catalog.QUICK):
        checks = catalog.checks(profile)
        assert len({c.name for c in checks}) == len(checks)
        assert {c.kind for c in checks} == {"accelerators", "fused_kernels", "job", "mixed_precision",
                                            "second_order", "xla_cnn", "xla_convnet"}  # fmt: skip
        assert {c.layout for c in checks} == set(catalog.LAYOUTS)
    assert sum(c.box_s for c in catalog.checks(catalog.FULL)) <= 8 * 60
    assert [c.params for c in catalog.checks(catalog.FULL) if c.params] == [16 << 20, 64 << 20]
