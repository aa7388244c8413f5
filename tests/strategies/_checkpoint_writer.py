"""Child process for test_checkpoint_safety: saves forever until the test kills it.

``python -m tests.strategies._checkpoint_writer MODEL_DIR WHAT [DIE_AT]``

Round k sets every weight of a 40 MB model to k, then saves either a
checkpoint (WHAT=checkpoint, through `strategies.training._checkpointing.Checkpointer`)
or ``model.keras`` (WHAT=model, through `save_model`), printing ``saving k``
before and ``saved k`` after. A complete save of round k therefore holds k
everywhere; a torn one would mix values or fail to load.

With DIE_AT=k, the process SIGKILLs itself in round k at the commit point,
after the data is written and before the save is made visible: just before the
checkpoint state file is updated, or just before ``model.keras`` is replaced.
"""

from __future__ import annotations

import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from strategies.training import _checkpointing  # noqa: E402

UNITS = (2_000, 5_000)  # 10M float32 weights: 40 MB per save.


def build_model() -> keras.Model:
    model = keras.Sequential([keras.Input((UNITS[0],)), keras.layers.Dense(UNITS[1], use_bias=False)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def _die_before(module: object, name: str) -> None:
    original = getattr(module, name)

    def killed(*args, **kwargs):
        print("dying at the commit point", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(module, name, killed)


def main(model_dir: str, what: str, die_at: int | None) -> None:
    strategy = tf.distribute.get_strategy()
    model = build_model()
    model.optimizer.build(model.trainable_variables)
    checkpointer = _checkpointing.Checkpointer(model, strategy, model_dir)
    start = checkpointer.restore()
    k = start.global_step if start else 0
    while True:
        k += 1
        model.layers[0].kernel.assign(np.full(model.layers[0].kernel.shape, k, np.float32))
        if k == die_at:
            if what == "checkpoint":
                from tensorflow.python.checkpoint import checkpoint_management

                _die_before(checkpoint_management, "update_checkpoint_state_internal")
            else:
                _die_before(os, "replace")
        print(f"saving {k}", flush=True)
        if what == "checkpoint":
            checkpointer.save(_checkpointing.TrainingState(epoch=k, global_step=k))
        else:
            _checkpointing.save_model(model, strategy, model_dir)
        print(f"saved {k}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
