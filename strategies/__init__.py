"""strategies: build any tf.distribute strategy from flags, Python or the environment.

```python
import strategies

strategy = strategies.build("auto")          # or build(strategies.flags.config_from_flags())
print(strategies.describe(strategy))
```

`strategies.flags` (absl flags) is imported on first use, so importing this
package defines no flags; scripts that parse flags must import it explicitly:
``from strategies import flags as strategy_flags``.
"""

from __future__ import annotations

import importlib
from typing import Any

from strategies import (
    _builders,  # noqa: F401  (registers the built-in strategies, in order)
    cluster,
)
from strategies._builders import split_cpu
from strategies._checkpointing import CheckpointMismatchError, load_model
from strategies._config import StrategyConfig
from strategies._detect import detect
from strategies._errors import StrategyError
from strategies._factory import build, describe, is_server_task
from strategies._fit import fit
from strategies._keras_compat import mirrored_strategy
from strategies._preemption import Preempted
from strategies._registry import available, register
from strategies._resolve import task_role
from strategies._server import serve_forever

__all__ = [
    "CheckpointMismatchError",
    "Preempted",
    "StrategyConfig",
    "StrategyError",
    "available",
    "build",
    "cluster",
    "describe",
    "detect",
    "fit",
    "flags",
    "is_server_task",
    "load_model",
    "mirrored_strategy",
    "register",
    "serve_forever",
    "split_cpu",
    "task_role",
]


def __getattr__(name: str) -> Any:
    # Lazy, so that `import strategies` never defines absl flags that could
    # clash with a user's own; `strategies.flags.x` still works once imported.
    if name == "flags":
        return importlib.import_module("strategies.flags")
    raise AttributeError(f"module 'strategies' has no attribute {name!r}")
