"""Unit tests of strategies.compat._keras_compat: each workaround, and that each upstream bug is real.

In-process only: MirroredStrategy runs on the two logical CPUs tests/conftest.py
creates. The "stock Keras" tests pin the upstream bugs that fail cleanly; when
one starts failing, Keras has fixed that bug and the workaround can be switched
off.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from strategies.compat import _keras_compat


def _mirrored() -> tf.distribute.Strategy:
    return _keras_compat.mirrored_strategy(["CPU:0", "CPU:1"])


def _one_device() -> tf.distribute.Strategy:
    return tf.distribute.OneDeviceStrategy("CPU:0")


# --- version guard -----------------------------------------------------------


@pytest.mark.parametrize("keras_version, tf_version", [
    ("3.15.0", "2.21.0"), ("3.15.9", "2.21.3"), ("3.15.1", "2.20.0"),
], ids=["keras3.15.0-tf2.21.0", "keras3.15.9-tf2.21.3", "keras3.15.1-tf2.20.0"])
def test_check_versions_accepts_verified(keras_version, tf_version, monkeypatch):
    monkeypatch.delenv(_keras_compat.ALLOW_UNVERIFIED_ENV, raising=False)
    _keras_compat.check_versions("a fix", keras_version, tf_version)


@pytest.mark.parametrize("keras_version, tf_version", [
    ("3.16.0", "2.21.0"), ("3.14.1", "2.21.0"), ("4.0.0", "2.21.0"), ("3.15.1", "2.22.0"),
    ("3.15.1", "2.19.0"),
], ids=["keras3.16", "keras3.14", "keras4", "tf2.22", "tf2.19"])
def test_check_versions_fails_loudly_elsewhere(keras_version, tf_version, monkeypatch):
    monkeypatch.delenv(_keras_compat.ALLOW_UNVERIFIED_ENV, raising=False)
    with pytest.raises(_keras_compat.KerasCompatError) as error:
        _keras_compat.check_versions("keras-team/keras#20585", keras_version, tf_version)
    message = str(error.value)
    assert f"keras {keras_version} with tensorflow {tf_version}" in message
    assert "keras-team/keras#20585" in message and "3.15.x" in message


def test_check_versions_can_be_overridden(monkeypatch):
    monkeypatch.setenv(_keras_compat.ALLOW_UNVERIFIED_ENV, "1")
    _keras_compat.check_versions("a fix", "3.99.0", "2.99.0")


# --- gradient synchronization ---------------------------------------------------


def _fit_one_weight(strategy, optimizer_fn, synchronize: bool, steps: int = 1) -> float:
    """w starts at 0; every example's gradient is 2.0 (loss = 2 * mean(w * x), x = 1)."""
    with strategy.scope():
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(
            1, use_bias=False, kernel_initializer="zeros")])
        model.compile(optimizer=optimizer_fn(), loss=lambda y, p: 2.0 * tf.reduce_mean(p))
        if synchronize:
            _keras_compat.synchronize_gradients(model.optimizer)
    x = np.ones((4 * steps, 1), np.float32)
    model.fit(tf.data.Dataset.from_tensor_slices((x, x)).batch(4), verbose=0)
    return float(model.get_weights()[0][0, 0])


CLIPS = [
    pytest.param(lambda: keras.optimizers.SGD(1.0, clipnorm=1.0), id="clipnorm"),
    pytest.param(lambda: keras.optimizers.SGD(1.0, global_clipnorm=1.0), id="global_clipnorm"),
]


@pytest.mark.parametrize("optimizer_fn", CLIPS)
def test_clipping_after_all_reduce_moves_like_one_device(optimizer_fn):
    one_device = _fit_one_weight(_one_device(), optimizer_fn, synchronize=False)
    two_replicas = _fit_one_weight(_mirrored(), optimizer_fn, synchronize=True)
    assert one_device == pytest.approx(-1.0)
    assert two_replicas == pytest.approx(-1.0)


@pytest.mark.parametrize("optimizer_fn", CLIPS)
def test_stock_keras_clips_per_replica(optimizer_fn):
    # The upstream defect the synchronization removes: each replica clips its half.
    assert _fit_one_weight(_mirrored(), optimizer_fn, synchronize=False) == pytest.approx(-2.0)


def _regression(strategy, optimizer_fn, synchronize: bool, steps_per_execution: int = 1,
                install_steps: bool = False, batches: int = 4):
    with strategy.scope():
        keras.utils.set_random_seed(7)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                                  keras.layers.Dense(1)])
        model.compile(optimizer=optimizer_fn(), loss="mse",
                      steps_per_execution=steps_per_execution)
        if synchronize:
            _keras_compat.synchronize_gradients(model.optimizer)
        if install_steps:
            _keras_compat.install_step_functions(model)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8 * batches, 3)).astype(np.float32)
    y = np.sin(x.sum(axis=1, keepdims=True)).astype(np.float32)
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), verbose=0)
    return model


# SGD, momentum and Adam, clipped or not, with accumulation: tests/strategies/test_fit.py.
OPTIMIZERS = [
    pytest.param(lambda: keras.optimizers.AdamW(0.05, weight_decay=0.1, use_ema=True,
                                                ema_overwrite_frequency=2, clipnorm=0.1,
                                                gradient_accumulation_steps=2),
                 id="adamw-ema-clip-accumulate2"),
]


@pytest.mark.parametrize("optimizer_fn", OPTIMIZERS)
def test_synchronized_mirrored_equals_one_device(optimizer_fn):
    reference = _regression(_one_device(), optimizer_fn, synchronize=False)
    mirrored = _regression(_mirrored(), optimizer_fn, synchronize=True)
    for expected, got in zip(reference.get_weights(), mirrored.get_weights(), strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert int(mirrored.optimizer.iterations.numpy()) == int(
        reference.optimizer.iterations.numpy())


def test_stock_keras_cannot_accumulate_under_mirrored():
    with pytest.raises(RuntimeError, match="merge_call"):
        _regression(_mirrored(), OPTIMIZERS[0].values[0], synchronize=False)


def test_synchronize_wraps_the_outermost_apply_and_patches_no_subclass():
    with _mirrored().scope():
        inner = keras.optimizers.Nadam(1.0, clipnorm=1.0)
        outer = keras.optimizers.LossScaleOptimizer(inner)
        patched = _keras_compat.synchronize_gradients(outer)
    assert patched is outer
    # The all-reduce sits in front of the outermost apply, the one train_step calls ...
    assert "apply" in vars(outer) and "apply" not in vars(inner)
    assert _keras_compat.is_synchronized(outer)
    # ... and no instance shadows a class's own method (Nadam's _backend_update_step).
    for name in ("_backend_update_step", "_apply_weight_decay", "_backend_apply_gradients"):
        assert name not in vars(inner) and name not in vars(outer)
    assert type(inner)._backend_update_step is keras.optimizers.Nadam._backend_update_step


def test_unflagged_optimizers_keep_tf_optimizer_methods():
    # The class patch changes nothing for an optimizer strategies.fit did not flag.
    reference = _regression(_one_device(), lambda: keras.optimizers.Nadam(0.05),
                            synchronize=False)
    with _mirrored().scope():
        _keras_compat.synchronize_gradients(keras.optimizers.SGD(0.1))  # installs the patch
    mirrored = _regression(_mirrored(), lambda: keras.optimizers.Nadam(0.05), synchronize=False)
    for expected, got in zip(reference.get_weights(), mirrored.get_weights(), strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_mirrored_strategies_with_other_shapes_do_not_collide():
    # Without unique collective keys the second fit aborts every collective op
    # in this process (tensorflow/tensorflow#62790).
    for width in (1, 5):
        strategy = _mirrored()
        with strategy.scope():
            model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(width)])
            model.compile(optimizer="sgd", loss="mse")
        model.fit(np.ones((16, 3)), np.ones((16, width)), batch_size=8, verbose=0)
        assert int(model.optimizer.iterations.numpy()) == 2


# --- step functions ------------------------------------------------------------


def test_steps_per_execution_under_mirrored_matches_one_step():
    # Stock Keras fails here with "You must feed a value for placeholder tensor
    # 'while/cond/Placeholder'" (keras-team/keras#19246). That failure is not
    # pinned by a test: it aborts a step mid-collective, and the orphaned
    # collective can stall the next tests in the process for minutes.
    # 5 batches per epoch and 3 steps per execution: the last execution is partial.
    one_step = _regression(_mirrored(), lambda: keras.optimizers.SGD(0.1), synchronize=True,
                           batches=5)
    three = _regression(_mirrored(), lambda: keras.optimizers.SGD(0.1), synchronize=True,
                        steps_per_execution=3, install_steps=True, batches=5)
    assert int(three.optimizer.iterations.numpy()) == 5
    for expected, got in zip(one_step.get_weights(), three.get_weights(), strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-6)


# --- building without data -------------------------------------------------------


class _NoIteration:
    def __iter__(self):
        raise AssertionError("the patched build must not read any batch")


def test_build_without_batches_needs_only_the_spec():
    with _mirrored().scope():
        model = keras.Sequential([keras.layers.Dense(2)])  # No Input: unbuilt.
        model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    spec = (tf.TensorSpec((None, 3), tf.float32), tf.TensorSpec((None, 2), tf.float32))
    _keras_compat.build_without_batches(model, spec)
    assert model.built and model.optimizer.built
    assert len(model.metrics_variables) > 2  # loss tracker + the compiled mae
    model._maybe_symbolic_build(iterator=_NoIteration())  # What model.fit calls.


# --- atomic counters -------------------------------------------------------------


def _assign_add_ops(variable) -> set[str]:
    @tf.function
    def bump():
        variable.assign_add(1)

    return {op.type for op in bump.get_concrete_function().graph.get_operations()}


def test_make_counters_atomic_uses_one_assign_add_op():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.optimizer.build(model.trainable_variables)
    counter = model.optimizer._iterations
    assert "AssignVariableOp" in _assign_add_ops(counter)  # Stock: read, add, write.
    _keras_compat.make_counters_atomic(model)
    ops = _assign_add_ops(counter)
    assert "AssignAddVariableOp" in ops and "AssignVariableOp" not in ops
    counter.assign_add(2)
    assert int(counter.numpy()) == 2


# --- private state ------------------------------------------------------------------


def test_examples_seen_counts_every_example():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.zeros((10, 2)), np.zeros((10, 1)), batch_size=4, verbose=0)
    assert _keras_compat.examples_seen(model) == 10.0


def test_examples_seen_is_none_for_a_train_step_without_the_tracker():
    class Bare(keras.Model):
        def train_step(self, data):
            return {"nothing": tf.constant(0.0)}

    inputs = keras.Input((2,))
    model = Bare(inputs=inputs, outputs=keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.zeros((10, 2)), np.zeros((10, 1)), batch_size=4, verbose=0)
    assert _keras_compat.examples_seen(model) is None


# --- ram:// (section 7): the TF file-system bugs, and the workarounds ---------------------------


def _ram_root() -> str:
    import uuid

    return f"ram://compat-{uuid.uuid4().hex}"


def _write(path: str, text: str = "x") -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


def test_stock_ram_directory_rename_leaves_the_files_under_it_behind():
    root = _ram_root()
    tf.io.gfile.makedirs(f"{root}/a")  # As TFDS makes its "incomplete..." directory.
    _write(f"{root}/a/f")
    tf.io.gfile.rename(f"{root}/a", f"{root}/b")
    # When this starts failing, TF moves whole directories on ram:// and rename_tree can go.
    assert not tf.io.gfile.exists(f"{root}/b/f") and tf.io.gfile.exists(f"{root}/a/f")


def test_rename_tree_moves_every_file_on_ram():
    root = _ram_root()
    tf.io.gfile.makedirs(f"{root}/a/sub")
    for name in ("f", "sub/g"):
        _write(f"{root}/a/{name}", name)
    _keras_compat.rename_tree(f"{root}/a", f"{root}/b")
    for name in ("f", "sub/g"):
        with tf.io.gfile.GFile(f"{root}/b/{name}") as f:
            assert f.read() == name
    assert not tf.io.gfile.exists(f"{root}/a/f")
    _write(f"{root}/c/f")
    with pytest.raises(FileExistsError, match="b exists"):
        _keras_compat.rename_tree(f"{root}/c", f"{root}/b")


def test_stock_ram_isdir_is_true_for_a_checkpoint_prefix():
    root = _ram_root()
    _write(f"{root}/ckpt-3.index")
    # When this starts failing, tf.train.load_checkpoint works on ram:// prefixes.
    assert tf.io.gfile.isdir(f"{root}/ckpt-3")


def test_checkpoint_reader_reads_a_ram_prefix_that_tf_calls_a_directory():
    root = _ram_root()
    checkpoint = tf.train.Checkpoint(v=tf.Variable(7.0))
    prefix = checkpoint.write(f"{root}/ckpt-3")
    with pytest.raises(ValueError, match="Couldn't find 'checkpoint' file"):
        tf.train.load_checkpoint(prefix)
    reader = _keras_compat.checkpoint_reader(prefix)
    assert reader.get_tensor("v/.ATTRIBUTES/VARIABLE_VALUE") == 7.0
