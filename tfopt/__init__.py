"""tfopt: correct, fast Keras 3 optimizers.

Use a class directly (``model.compile(optimizer=tfopt.Adam(1e-3))``) or by
name (``tfopt.get("adam", learning_rate=1e-3)``). Every optimizer is also
registered with Keras as ``"tfopt>ClassName"`` for ``.keras`` files and
``keras.optimizers.deserialize``.
"""

from tfopt._registry import available, get

# Optimizer modules register themselves on import; the order here is the
# order of tfopt.available().

__all__ = [
    "available",
    "get",
]
