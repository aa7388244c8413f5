"""launch.local_cluster: per-task TF_CONFIG, prefixed output, exit codes, and no orphans.

The tasks are small Python programs (no TensorFlow), so these run in seconds;
real training clusters are in tests/strategies/test_fit_cluster.py.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from launch import local_cluster

pytestmark = pytest.mark.cluster

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _program(body: str) -> list[str]:
    prelude = ("import json, os, subprocess, sys, time\n"
               "task = json.loads(os.environ['TF_CONFIG'])['task']\n"
               "name = f\"{task['type']}{task['index']}\"\n")
    return [sys.executable, "-c", prelude + textwrap.dedent(body)]


def _alive(pid: int) -> bool:
    """Running and not a zombie (a killed orphan stays a zombie until init reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _eventually_dead(pids: list[int], timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def test_each_task_gets_its_own_tf_config_and_prefix():
    out = io.StringIO()
    result = local_cluster.run_cluster(
        _program("print('cluster', json.dumps(json.loads(os.environ['TF_CONFIG'])['cluster']))\n"
                 "print('I am', name)\n"
                 "time.sleep(1.5 if name == 'chief0' else 0)"),  # The chief's exit ends it.
        workers=2, ps=1, chief=True, timeout=30, output=out)
    assert result.returncode == 0, result.reason
    lines = out.getvalue().splitlines()
    for task, index in (("chief", 0), ("worker", 0), ("worker", 1), ("ps", 0)):
        assert f"[{task} {index}] I am {task}{index}" in lines
    clusters = {line.split(" cluster ", 1)[1] for line in lines if " cluster " in line}
    assert len(clusters) == 1  # Every task sees the same cluster, and only its task differs.
    spec = json.loads(clusters.pop())
    addresses = [a for job in ("chief", "worker", "ps") for a in spec[job]]
    assert len(spec["worker"]) == 2 and len(spec["ps"]) == 1 and len(spec["chief"]) == 1
    assert len(set(addresses)) == 4 and all(a.startswith("127.0.0.1:") for a in addresses)


def test_a_failed_task_stops_the_cluster_and_leaves_no_process(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    program = _program(f"""
        if name == "worker0":  # Starts a grandchild, then waits forever.
            child = subprocess.Popen(["sleep", "300"])
            open({str(pid_file)!r} + ".tmp", "w").write(str(child.pid))
            os.replace({str(pid_file)!r} + ".tmp", {str(pid_file)!r})
            time.sleep(300)
        while not os.path.exists({str(pid_file)!r}):
            time.sleep(0.05)
        sys.exit(3)
    """)
    started = time.monotonic()
    with local_cluster.LocalCluster(program, workers=2, timeout=60, output=None) as cluster:
        result = cluster.wait()
        pids = cluster.pids + [int(pid_file.read_text())]
    assert result.returncode == 3 and result.failed == "worker 1", result.reason
    assert time.monotonic() - started < 30  # Not the 300 s of the survivors.
    assert _eventually_dead(pids) == []


def test_timeout_kills_every_task():
    with local_cluster.LocalCluster(_program("time.sleep(300)"), workers=2, timeout=1.0,
                                    output=None) as cluster:
        result = cluster.wait()
        pids = cluster.pids
    assert result.returncode == local_cluster.EXIT_TIMEOUT
    assert _eventually_dead(pids) == []


def test_parameter_server_cluster_ends_with_its_chief_and_tolerates_a_worker_failure():
    program = _program("""
        if name == "worker1":
            sys.exit(1)  # The coordinator re-runs a lost worker's steps elsewhere.
        if name == "chief0":
            time.sleep(1.0)
            print("trained")
            sys.exit(0)
        time.sleep(300)  # Servers serve until stopped.
    """)
    out = io.StringIO()
    with local_cluster.LocalCluster(program, workers=2, ps=1, chief=True, timeout=60,
                                    output=out) as cluster:
        result = cluster.wait()
        pids = cluster.pids
    assert result.returncode == 0, result.reason
    assert "[chief 0] trained" in out.getvalue()
    assert "worker 1 exited with code 1" in out.getvalue()
    assert _eventually_dead(pids) == []


def test_a_failed_parameter_server_stops_the_cluster():
    program = _program("sys.exit(5 if name == 'ps0' else 0) if name != 'chief0' "
                       "else time.sleep(300)")
    result = local_cluster.run_cluster(program, workers=1, ps=1, chief=True, timeout=60,
                                       output=None)
    assert (result.returncode, result.failed) == (5, "ps 0")


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "launch.local_cluster", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_as_in_a_terminal)


def _sigint_as_in_a_terminal() -> None:
    # A suite started as a background job (`make test &`, `nohup`) runs with
    # SIGINT ignored, and children inherit that: Python then installs no
    # KeyboardInterrupt handler and the launcher, rightly, ignores Ctrl-C. The
    # launcher under test gets the disposition a terminal's foreground job has.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _started_pids(launcher: subprocess.Popen[str], n: int) -> list[int]:
    pids = []
    while len(pids) < n:
        line = launcher.stdout.readline()
        assert line, "the launcher stopped before its tasks started"
        if " pid " in line:
            pids.append(int(line.rsplit(" ", 1)[1]))
    return pids


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, local_cluster.EXIT_INTERRUPTED),
                                       (signal.SIGTERM, local_cluster.EXIT_TERMINATED)],
                         ids=["ctrl-c", "sigterm"])
def test_cli_stops_every_task_on_a_signal(sig, code):
    launcher = _cli("--workers=2", "--timeout=60", "--", *_program(
        "print('pid', os.getpid(), flush=True); time.sleep(300)"))
    try:
        pids = _started_pids(launcher, 2)
        launcher.send_signal(sig)
        try:
            returncode = launcher.wait(timeout=20)
        except subprocess.TimeoutExpired:
            returncode = None  # Reported below with what the launcher said, to tell why.
    finally:
        launcher.kill()
        out, err = launcher.communicate()
    assert returncode == code, f"launcher exit {returncode}; stdout:\n{out}\nstderr:\n{err}"
    assert _eventually_dead(pids) == []


def test_cli_sigkilled_launcher_takes_its_tasks_down():
    launcher = _cli("--workers=2", "--timeout=60", "--", *_program(
        "print('pid', os.getpid(), flush=True); time.sleep(300)"))
    try:
        pids = _started_pids(launcher, 2)
        launcher.kill()  # No cleanup runs; the kernel's parent-death signal does it.
    finally:
        launcher.kill()
        launcher.wait()
    assert _eventually_dead(pids) == []


def test_cli_propagates_the_first_failure():
    launcher = _cli("--workers=2", "--timeout=60", "--", *_program(
        "sys.exit(7 if name == 'worker0' else 0)"))
    out, _ = launcher.communicate(timeout=30)
    assert launcher.returncode == 7
    assert "[local_cluster] worker 0 failed with exit code 7" in out


def test_a_failed_task_s_one_line_error_is_the_reason():
    # E.g. launch.train naming a hung peer: the exit code alone does not say which.
    launcher = _cli("--workers=1", "--timeout=60", "--", *_program(
        "print('train: error: lost worker 1 of the cluster', file=sys.stderr, flush=True); sys.exit(1)"))
    out, _ = launcher.communicate(timeout=30)
    assert launcher.returncode == 1
    assert ("[local_cluster] worker 0 failed with exit code 1: train: error: lost worker 1 of the "
            "cluster; stopped every task.") in out


@pytest.mark.parametrize("args, message", [
    (["--workers=0", "--", "true"], "--workers must be at least 1. Received: workers=0."),
    (["--workers=1", "--ps=1", "--", "true"], "needs a coordinator: add --chief"),
    (["--workers=1"], "Give the command every task runs after `--`"),
], ids=["no-workers", "ps-without-chief", "no-command"])
def test_cli_usage_errors_exit_2_with_one_line(args, message):
    launcher = _cli(*args)
    _, err = launcher.communicate(timeout=30)
    lines = err.strip().splitlines()
    assert launcher.returncode == 2
    assert len(lines) == 1 and lines[0].startswith("local_cluster: ") and message in lines[0]


# --- --max_restarts -----------------------------------------------------------------------------

def _attempts_program(tmp_path, body: str) -> list[str]:
    """A task program that knows which attempt of its task this is (``attempt``, from 1)."""
    counting = textwrap.dedent(f"""
        counter = os.path.join({str(tmp_path)!r}, name + ".attempts")
        attempt = (int(open(counter).read()) if os.path.exists(counter) else 0) + 1
        open(counter, "w").write(str(attempt))
    """)
    return _program(counting + textwrap.dedent(body))


def test_max_restarts_restarts_every_task_after_a_kill_and_says_so(tmp_path):
    out = io.StringIO()
    program = _attempts_program(tmp_path, """
        if name == "worker1" and attempt == 1:
            os.kill(os.getpid(), 9)
        time.sleep(0.2)
    """)
    result = local_cluster.run_cluster(program, workers=2, timeout=60, output=out, max_restarts=2)
    assert result.returncode == 0, (result.reason, out.getvalue())
    line = ("[local_cluster] worker 1 was killed by SIGKILL; restart 1 of 2 for worker 1: restarting "
            "every task; training resumes from the newest checkpoint.")
    assert line in out.getvalue().splitlines(), out.getvalue()
    # A multi-worker cluster restarts whole: worker 0 ran twice too.
    assert (tmp_path / "worker0.attempts").read_text() == "2"
    assert (tmp_path / "worker1.attempts").read_text() == "2"


def test_max_restarts_runs_out_with_exit_3(tmp_path):
    out = io.StringIO()
    program = _attempts_program(tmp_path, "sys.exit(1 if name == 'worker0' else 0)")
    result = local_cluster.run_cluster(program, workers=2, timeout=60, output=out, max_restarts=2)
    assert result.returncode == local_cluster.EXIT_OUT_OF_RESTARTS == 3, result.reason
    assert result.failed == "worker 0"
    assert (tmp_path / "worker0.attempts").read_text() == "3"  # The first run and 2 restarts.
    text = out.getvalue()
    assert "restart 1 of 2 for worker 0" in text and "restart 2 of 2 for worker 0" in text
    assert "worker 0 exited with code 1 after 2 restart(s)" in result.reason


def test_a_user_error_is_never_restarted(tmp_path):
    out = io.StringIO()
    program = _attempts_program(tmp_path, "sys.exit(2 if name == 'worker1' else 0)")
    result = local_cluster.run_cluster(program, workers=2, timeout=60, output=out, max_restarts=5)
    assert result.returncode == 2, result.reason
    assert "user error" in result.reason and "restart" not in out.getvalue().replace("not restarted", "")
    assert (tmp_path / "worker1.attempts").read_text() == "1"


def test_max_restarts_restarts_a_parameter_server_worker_alone(tmp_path):
    out = io.StringIO()
    done = tmp_path / "worker1.second-run"
    program = _attempts_program(tmp_path, f"""
        if name == "worker1":
            if attempt == 1:
                os.kill(os.getpid(), 9)
            open({str(done)!r}, "w").write("ok")
        if name == "chief0":  # The coordinator waits for the restarted worker.
            deadline = time.time() + 30
            while not os.path.exists({str(done)!r}) and time.time() < deadline:
                time.sleep(0.05)
            sys.exit(0 if os.path.exists({str(done)!r}) else 1)
        time.sleep(300)  # Workers and ps serve until the chief is done.
    """)
    result = local_cluster.run_cluster(program, workers=2, ps=1, chief=True, timeout=60, output=out,
                                       max_restarts=1)  # fmt: skip
    assert result.returncode == 0, (result.reason, out.getvalue())
    assert "worker 1 was killed by SIGKILL; restart 1 of 1 for worker 1: restarting it." in out.getvalue()
    assert (tmp_path / "chief0.attempts").read_text() == "1"  # The chief was not restarted.
    assert (tmp_path / "worker0.attempts").read_text() == "1"


def test_max_restarts_flag_is_parsed_and_bounded():
    proc = subprocess.run([sys.executable, "-m", "launch.local_cluster", "--max_restarts=-1", "--", "true"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "max_restarts" in proc.stderr, proc.stderr


def test_evaluator_task_is_outside_the_cluster_waited_for_and_never_stops_training():
    # The evaluator's TF_CONFIG is Vertex's: task type `evaluator`, absent from the cluster.
    out = io.StringIO()
    result = local_cluster.run_cluster(
        _program("cluster = json.loads(os.environ['TF_CONFIG'])['cluster']\n"
                 "print('I am', name, 'in', sorted(cluster))\n"
                 "if name == 'evaluator0':\n"
                 "    time.sleep(1.0)\n"  # Outlives the workers: the cluster waits for it.
                 "    print('evaluated')"),
        workers=2, evaluator=True, timeout=30, output=out)
    assert result.returncode == 0, result.reason
    lines = out.getvalue().splitlines()
    assert "[evaluator 0] I am evaluator0 in ['worker']" in lines
    assert "[evaluator 0] evaluated" in lines
    # A failed evaluator is reported; the workers finish and the cluster succeeds.
    out = io.StringIO()
    result = local_cluster.run_cluster(
        _program("if name == 'evaluator0': sys.exit(1)\ntime.sleep(0.5)"),
        workers=2, evaluator=True, timeout=30, output=out)
    assert result.returncode == 0, result.reason
    assert "[local_cluster] evaluator 0 exited with code 1; training goes on without it." in out.getvalue()


def test_ctrl_c_before_the_wait_begins_is_an_interrupt_too(monkeypatch):
    # The window between starting the tasks and wait()'s own handler: Ctrl-C there
    # must also stop every task and exit 130, not escape as a traceback.
    from absl import flags
    from absl.testing import flagsaver

    started = []

    def start_then_interrupted(self):
        for task in self.tasks:
            self._spawn(task)
        started.extend(task.pid for task in self.tasks)
        raise KeyboardInterrupt

    monkeypatch.setattr(local_cluster.LocalCluster, "start", start_then_interrupted)
    command = _program("time.sleep(300)")
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["local_cluster", "--workers=2", "--timeout=60"])
        try:
            code = local_cluster.main(["local_cluster", *command])
        except KeyboardInterrupt:  # Would otherwise end the whole pytest session.
            pytest.fail("Ctrl-C escaped local_cluster.main as a KeyboardInterrupt")
        assert code == local_cluster.EXIT_INTERRUPTED
    assert len(started) == 2 and _eventually_dead(started) == []
