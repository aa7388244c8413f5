"""tfopt: correct, fast Keras 3 optimizers.

Use a class directly (``model.compile(optimizer=tfopt.Adam(1e-3))``) or by
name (``tfopt.get("adam", learning_rate=1e-3)``). Every optimizer is also
registered with Keras as ``"tfopt>ClassName"`` for ``.keras`` files and
``keras.optimizers.deserialize``.
"""

from tfopt._registry import available, get, get_class

# Optimizer modules register themselves on import; the order here is the
# order of tfopt.available(), so import sorting is off for them.
# isort: off
from tfopt._gradient_descent import GradientDescent
from tfopt._sgd import SGD
from tfopt._dynamic_gradient_descent import DynamicGradientDescent
from tfopt._adagrad import Adagrad
from tfopt._adam import Adam
from tfopt._lars import LARS
from tfopt._lamb import LAMB
from tfopt._radam import RAdam
from tfopt._lookahead import Lookahead
from tfopt._lazy_adam import LazyAdam
from tfopt._shampoo import Shampoo
from tfopt._soap import SOAP
# isort: on
from tfopt._sharding_plan import assign_owners, matrix_cost
from tfopt._skip_nonfinite import SkipNonFinite, SkippedSteps

__all__ = [
    "Adagrad",
    "Adam",
    "DynamicGradientDescent",
    "GradientDescent",
    "LAMB",
    "LARS",
    "LazyAdam",
    "Lookahead",
    "RAdam",
    "SGD",
    "Shampoo",
    "SOAP",
    "SkipNonFinite",
    "SkippedSteps",
    "assign_owners",
    "available",
    "get",
    "get_class",
    "matrix_cost",
]
