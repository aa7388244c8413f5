"""The launch entry points: importable together, and ``--help`` lists their flags.

absl flags are process-global, so two entry points that each define a flag of
the same name cannot share a process; flags they share live in
`launch._flags`. A console script (``tfopt-train``) runs a wrapper pip writes,
so absl's ``--help`` used to list no flags at all; each one is checked against
``python -m`` here, through a wrapper written the way pip writes it.
"""

from __future__ import annotations

import configparser
import importlib
import os
import pkgutil
import re
import subprocess
import sys

import pytest
from absl import flags

import launch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}


def _entry_point_modules() -> list[str]:
    """Every launch module that runs as ``python -m`` (it has a ``__main__`` block)."""
    found = []
    for info in pkgutil.walk_packages(launch.__path__, prefix="launch."):
        path = os.path.join(REPO, *info.name.split("."))
        path = os.path.join(path, "__main__.py") if info.ispkg else path + ".py"
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                if 'if __name__ == "__main__":' in f.read():
                    found.append(info.name)
    return found


def _console_scripts() -> dict[str, str]:
    config = configparser.ConfigParser()
    config.read(os.path.join(REPO, "setup.cfg"))
    lines = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=")) for line in lines)


def test_entry_points_are_found():
    assert {"launch.train", "launch.local_cluster", "launch.tpu_vm", "launch.vertex", "launch.kubernetes",
            "launch.bench.fit", "launch.bench.optimizers"} <= set(_entry_point_modules())
    assert _console_scripts() == {"tfopt-train": "launch.train:run",
                                  "tfopt-local-cluster": "launch.local_cluster:run",
                                  "tfopt-vertex": "launch.vertex:run",
                                  "tfopt-kubernetes": "launch.kubernetes:run"}


def test_every_entry_point_imports_into_one_process():
    # A duplicate flag raises flags.DuplicateFlagError at import.
    modules = [importlib.import_module(name) for name in _entry_point_modules()]
    assert all(callable(getattr(m, "run", None)) for m in modules)


def test_shared_flags_are_defined_once_and_read_by_both_benches_and_train():
    from launch import _flags
    for holder in _flags.SHARED:
        assert flags.FLAGS.find_module_defining_flag(holder.name) == "launch._flags"


def test_shared_flag_help_states_each_entry_points_default():
    from launch import _flags, _job
    from launch.bench import fit as bench_fit
    epochs, steps = (flags.FLAGS[h.name].help for h in (_flags.EPOCHS, _flags.STEPS_PER_EPOCH))
    assert f"launch.train trains {_job.Job().epochs};" in epochs
    assert f"launch.bench.fit runs {bench_fit._DEFAULT_EPOCHS} " in epochs
    assert f"launch.bench.fit runs {bench_fit._DEFAULT_STEPS_PER_EPOCH}." in steps


def _listed_flags(*commands: list[str]) -> list[set[str]]:
    # Started together: each pays for a TensorFlow import.
    procs = [subprocess.Popen(c + ["--help"], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for c in commands]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    return [set(re.findall(r"^\s+--(?:\[no\])?(\w+):", out, re.MULTILINE)) for out in outputs]


@pytest.mark.slow  # tfopt-train: two processes importing TensorFlow, 15-27 s on 2 shared cores.
@pytest.mark.parametrize("script", sorted(_console_scripts()))
def test_console_script_help_lists_the_flags_python_m_lists(script, tmp_path):
    module, function = _console_scripts()[script].split(":")
    wrapper = tmp_path / script  # What pip writes into the venv's bin/.
    wrapper.write_text(
        f"import sys\nfrom {module} import {function}\n"
        f"if __name__ == '__main__':\n    sys.exit({function}())\n"
    )
    as_script, as_module = _listed_flags([sys.executable, str(wrapper)],
                                         [sys.executable, "-m", module])
    own = {f.name for f in flags.FLAGS.get_flags_for_module(importlib.import_module(module))}
    assert own and own <= as_module
    assert as_script == as_module
