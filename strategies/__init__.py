"""strategies: build any tf.distribute strategy from flags, Python or the environment, and train on it.

```python
import strategies

strategy = strategies.build("auto")          # or build(strategies.flags.config_from_flags())
print(strategies.describe(strategy))
history = strategies.fit(model_fn, dataset, strategy=strategy, epochs=5, model_dir="/tmp/run")
```

The package has two halves that meet at one seam, the ``tf.distribute.Strategy``
object (docs/design.md):

* `strategies.building` turns a `StrategyConfig` (from flags, Python or the
  environment) into a strategy: detection, resolution, the registry, the
  builders, the cluster description and the servers;
* `strategies.training` trains on any strategy: `fit`, its checkpoints,
  resumption, preemption and the parameter-server loop.

Building never imports training (tests/test_import_graph.py). Both use
`strategies.compat`, the one place that touches Keras and TensorFlow
internals.

Every public name is imported on first use, so ``import strategies.cluster``
(launchers that start processes) loads no TensorFlow, and importing this
package defines no absl flags: scripts that parse flags import them
explicitly, ``from strategies import flags as strategy_flags``.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module that defines it; the name's first use imports it.
_PUBLIC = {
    "CheckpointMismatchError": "strategies.training._checkpointing",
    "CheckpointWriteError": "strategies.training._checkpointing",
    "KerasCompatError": "strategies.compat._keras_compat",
    "Preempted": "strategies.training._preemption",
    "StrategyConfig": "strategies.building._config",
    "StrategyError": "strategies.building._errors",
    "available": "strategies.building._registry",
    "build": "strategies.building._factory",
    "describe": "strategies.building._factory",
    "detect": "strategies.building._detect",
    "evaluate_checkpoints": "strategies.training._evaluator",
    "fit": "strategies.training._fit",
    "is_server_task": "strategies.building._factory",
    "load_model": "strategies.training._checkpointing",
    "mirrored_strategy": "strategies.compat._keras_compat",
    "register": "strategies.building._registry",
    "serve_forever": "strategies.building._server",
    "split_cpu": "strategies.building._builders",
    "task_role": "strategies.building._resolve",
}
_SUBMODULES = ("cluster", "flags")

__all__ = sorted([*_PUBLIC, *_SUBMODULES])


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"strategies.{name}")
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'strategies' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
