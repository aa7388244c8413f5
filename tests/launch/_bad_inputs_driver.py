"""Runs many ``launch.train`` command lines in one process, for test_bad_inputs.

A fresh ``python -m launch.train`` pays about 5 s of TensorFlow import per
command; 50 of them would not fit the test budget. This driver imports
``launch.train`` once and sends each command line through its real console
entry point, ``launch.train.run(argv)`` (absl's ``app.run``, the flag parser,
``main``), exactly as ``python -m launch.train`` does, and records per command:

* the exit status (``SystemExit.code``; an escaping exception counts as 1,
  with its traceback in ``stderr``, as the interpreter would print it);
* everything written to file descriptor 2 (Python and C++ alike);
* the files created, changed or removed under the watched directories.

Between commands it resets what one command may leave behind in the process:
parsed flags, ``TF_CONFIG``, the working directory, Keras' dtype policy.

Protocol: a JSON object on stdin, ``{"setup": [argv...], "fixtures":
"module:function", "root": dir, "cases": [{"id", "argv", "env"}...], "watch":
[dir...], "timeout": seconds}``: the setup commands run first, then
``function(root)`` makes what the cases need; one JSON object on stdout,
``{"setup": [result...], "cases": {id: result}}``.

The driver is offline by construction: connections to anything but loopback
fail at once, so a dataset that is not prepared can never be downloaded.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import importlib
import json
import os
import signal
import socket
import sys
import tempfile
import time
import traceback
from typing import Any

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _go_offline() -> None:
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def refuse(host: Any) -> None:
        if str(host) not in _LOOPBACK:
            raise OSError(errno.ENETUNREACH, f"test driver is offline: {host} is not loopback")

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            refuse(address[0])
        return real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None:
            refuse(host)
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = lambda self, address: connect(self, address) or 0  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo


def snapshot(directories: list[str]) -> dict[str, list[Any]]:
    """``{path: [size, mtime_ns, sha256]}`` of every file under ``directories``."""
    state: dict[str, list[Any]] = {}
    for top in directories:
        for root, dirs, files in os.walk(top):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(root, name)
                info = os.stat(path)
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                state[path] = [info.st_size, info.st_mtime_ns, digest]
    return state


def diff(before: dict[str, list[Any]], after: dict[str, list[Any]]) -> list[str]:
    changes = [f"removed {p}" for p in sorted(set(before) - set(after))]
    changes += [f"created {p}" for p in sorted(set(after) - set(before))]
    changes += [f"changed {p}" for p in sorted(set(before) & set(after)) if before[p] != after[p]]
    return changes


class _Timeout(BaseException):
    pass


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Timeout()


def run_one(argv: list[str], env: dict[str, str | None], watch: list[str], timeout: int) -> dict[str, Any]:
    import keras
    from absl import flags

    from launch import train

    flags.FLAGS.unparse_flags()
    saved_env = {k: os.environ.get(k) for k in env}
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    cwd = os.getcwd()
    before = snapshot(watch)
    start = time.monotonic()
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fd = os.dup(2)
    code: Any
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        signal.alarm(timeout)
        try:
            train.run(["launch.train", *argv])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
        except _Timeout:
            code = "timeout"
        except BaseException:  # What the interpreter would print and exit 1 with.
            traceback.print_exc()
            code = 1
        finally:
            signal.alarm(0)
            # What this command leaves for the garbage collector (TF warns
            # about checkpoints with unrestored values on deletion) is its own.
            gc.collect()
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
        captured.seek(0)
        stderr = captured.read().decode("utf-8", "replace")
    os.chdir(cwd)
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    keras.mixed_precision.set_global_policy("float32")
    seconds = time.monotonic() - start
    return {"code": code, "stderr": stderr, "changes": diff(before, snapshot(watch)), "seconds": seconds}


def main() -> None:
    request = json.load(sys.stdin)
    _go_offline()
    signal.signal(signal.SIGALRM, _on_alarm)
    # The results go to the real stdout; what the commands print goes to stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    watch, timeout = request["watch"], int(request["timeout"])
    results: dict[str, Any] = {"setup": [], "cases": {}, "import_seconds": 0.0}
    start = time.monotonic()
    import launch.train  # noqa: F401  Once, for every command.

    results["import_seconds"] = time.monotonic() - start
    for argv in request["setup"]:
        results["setup"].append(run_one(argv, {}, [], timeout))
        if results["setup"][-1]["code"] != 0:  # Say why, rather than fail later on what it did not make.
            sys.exit(f"the setup run failed (exit {results['setup'][-1]['code']}): {' '.join(argv)}\n"
                     + results["setup"][-1]["stderr"][-2500:])
    if request.get("fixtures"):
        module, _, function = request["fixtures"].partition(":")
        getattr(importlib.import_module(module), function)(request["root"])
    # A full collection walks TensorFlow's whole object graph (0.4 s); after
    # this, each command's collection walks only what that command made.
    gc.collect()
    gc.freeze()
    for case in request["cases"]:
        results["cases"][case["id"]] = run_one(case["argv"], case.get("env", {}), watch, timeout)
    json.dump(results, out)
    out.close()


if __name__ == "__main__":
    main()
