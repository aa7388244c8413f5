"""A rehearsal probe: prints how `strategies` resolves this process's cluster, then exits.

Run as every replica of a rehearsed job (tests/launch/test_rehearsal.py); it
imports no TensorFlow, so a whole job of them takes a second or two.
"""

from __future__ import annotations

import json
import os
import types

from strategies.building import _resolve

# The two fields `resolve` reads, unset. Not a StrategyConfig: building one
# checks its strategy name against the registry, which imports TensorFlow
# (20 s or more per process on a loaded 2-core machine).
NO_FLAGS = types.SimpleNamespace(has_cluster_hosts=False, allow_public_addresses=False)

if __name__ == "__main__":
    found = _resolve.resolve(NO_FLAGS, os.environ)
    print("RESOLVED " + json.dumps(None if found is None else {
        "source": found.source, "task": [found.task_type, found.task_index], "spec": found.spec}))
