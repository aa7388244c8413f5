"""The fast suite on the next Keras and TensorFlow, for `make test-upstream` (docs/upstream.md).

Runs ``pytest -m "not cluster and not notebook and not slow"`` with a JUnit XML
report and sorts every failure and error into two groups, from the test's own
failure text:

* **refused by a version guard**: `KerasCompatError`, raised by
  `_keras_compat.check_versions` when a workaround meets a Keras/TF version it
  was not verified on. That is the guards doing their job, not a bug; these
  are counted per file, not listed one by one;
* **everything else**, listed with its first message line: these are what to
  investigate.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree

# The class, and the sentence of check_versions' message a one-line launcher error still carries.
REFUSAL_MARKERS = ("KerasCompatError", "which was written and tested for keras")
MARKER = "not cluster and not notebook and not slow"


def classify(junit_xml: str) -> tuple[dict[str, int], list[str]]:
    """``({file: refusals}, ["FAILED|ERROR node - message", ...])`` from a pytest JUnit XML report."""
    refused: dict[str, int] = collections.Counter()
    others = []
    for case in ElementTree.parse(junit_xml).getroot().iter("testcase"):
        for kind in ("failure", "error"):
            for problem in case.findall(kind):
                text = f"{problem.get('message', '')}\n{problem.text or ''}"
                path = case.get("classname", "").replace(".", "/") + ".py"
                if any(marker in text for marker in REFUSAL_MARKERS):
                    refused[path] += 1
                    continue
                message = next((line.strip() for line in (problem.get("message") or "").splitlines()
                                if line.strip()), "(no message)")  # fmt: skip
                label = "FAILED" if kind == "failure" else "ERROR"
                others.append(f"{label} {path}::{case.get('name')} - {message[:200]}")
    return dict(refused), others


def run(repo: str) -> str:
    """Runs the fast suite in this interpreter's venv; returns its summary for docs/upstream.md."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = os.path.join(tmp, "suite.xml")
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
                               "-m", MARKER, f"--junitxml={xml}"],
                              cwd=repo, capture_output=True, text=True)  # fmt: skip
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        head = f"exit {proc.returncode}: {lines[-1] if lines else 'no output'}"
        if not os.path.exists(xml):
            return "\n".join([head, *lines[-40:], *proc.stderr.splitlines()[-20:]])
        refused, others = classify(xml)
    return summary(head, refused, others)


def summary(head: str, refused: dict[str, int], others: list[str]) -> str:
    parts = [head, "",
             f"Refused by a version guard (expected, by design): {sum(refused.values())} failures and errors "
             "raise KerasCompatError, every workaround refusing a Keras/TF version it was not verified on; "
             "set STRATEGIES_ALLOW_UNVERIFIED_KERAS=1 to try them there. Per file: "
             + (", ".join(f"{path} {n}" for path, n in sorted(refused.items(), key=lambda kv: (-kv[1], kv[0])))
                or "none") + ".",
             "", f"Other failures and errors (to investigate): {len(others)}", *others]  # fmt: skip
    return "\n".join(parts)
