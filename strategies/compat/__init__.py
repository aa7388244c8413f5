"""Every Keras 3 and TensorFlow internal that `strategies` touches, in one place.

`_keras_compat` holds the fixes `strategies.fit` installs (each naming its
upstream issue, each behind `check_versions`); `_tf_internals` the private
TensorFlow APIs that resumption, preemption and the input checks read. Nothing
else in `strategies` imports ``keras.src`` or ``tensorflow.python``
(tests/strategies/test_keras_compat.py checks this).
"""

from strategies.compat._keras_compat import rename_tree

# The one workaround `launch` needs too (TFDS renames its prepared dataset into
# place, and TF's ram:// filesystem renames directories wrongly): public, so
# that launch imports no private module of strategies.
__all__ = ["rename_tree"]
